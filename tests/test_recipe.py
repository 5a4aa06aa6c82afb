"""One configuration: the recipe owns every default, check and help line; nothing is silently coerced."""

from __future__ import annotations

import dataclasses
import re

import pytest

from rtdetr_prune.cli import _parser
from rtdetr_prune.errors import UserError
from rtdetr_prune.pruning.engine import PruneOptions
from rtdetr_prune.recipe import FIELDS, Recipe, default, load_recipe
from rtdetr_prune.train.sparsity import SparseOptions


@pytest.mark.parametrize("cls", [PruneOptions, SparseOptions])
def test_option_objects_take_the_recipes_defaults(cls):
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            assert f.name in FIELDS, f"{cls.__name__}.{f.name} is not a recipe option"
            assert f.default == default(f.name), f"{cls.__name__}.{f.name}: {f.default} != recipe's {default(f.name)}"


@pytest.mark.parametrize("key, value, message", [
    ("round_to", 0, "--round-to must be at least 1"),
    ("max_layer_ratio", 1.0, "--max-layer-ratio must be between 0 and 1"),
    ("speed_up", 1.0, "--speed-up must be greater than 1"),
    ("imgsz", 100, "--imgsz must be a positive multiple of 32"),
    ("reg_schedule", "lineer", "Did you mean 'linear'"),
])
def test_one_check_per_option_wherever_it_is_given(key, value, message):
    """The recipe, the engine's options and sparse training's options reject a bad value with one message."""
    with pytest.raises(UserError, match=message):
        Recipe(**{key: value}).validate()
    targets = [cls for cls in (PruneOptions, SparseOptions) if key in {f.name for f in dataclasses.fields(cls)}]
    assert targets, key
    for cls in targets:
        with pytest.raises(UserError, match=message):
            cls(**({"method": "slim"} if cls is SparseOptions else {}), **{key: value})


@pytest.mark.parametrize("values, message", [
    ({"epochs": 2.7}, "'epochs' .* must be a whole number, got 2.7"),
    ({"latency": None}, "'latency' .* must be true or false, got null"),
    ({"val": "yes"}, "'val' .* must be true or false, got 'yes'"),
    ({"round_to": True}, "'round_to' .* must be a whole number, got True"),
    ({"speed_up": "2"}, "'speed_up' .* must be a finite number, got '2'"),
    ({"speed_up": float("inf")}, "'speed_up' .* must be a finite number"),
    ({"model": None}, "'model' .* must be a string, got null"),
])
def test_nothing_is_silently_coerced(tmp_path, values, message):
    with pytest.raises(UserError, match=message):
        Recipe().updated(values, source="recipe.yaml")
    key, value = next(iter(values.items()))
    if value is None or isinstance(value, (bool, str, int)) and not isinstance(value, float):
        text = {None: "null", True: "true"}.get(value, repr(value))
        (tmp_path / "r.yaml").write_text(f"{key}: {text}\n")
        with pytest.raises(UserError, match=message.split(" .* ")[1]):
            load_recipe(tmp_path / "r.yaml")


def test_ints_are_floats_and_paths_are_strings(tmp_path):
    recipe = Recipe().updated({"speed_up": 2, "model": tmp_path / "m.pt"})
    assert recipe.speed_up == 2.0 and isinstance(recipe.speed_up, float)
    assert recipe.model == str(tmp_path / "m.pt")


def _help_of(command: str) -> dict[str, str]:
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command]
    return {a.option_strings[-1]: a.help or "" for a in sub._actions if a.option_strings}


def test_every_prune_option_is_explained():
    helps = _help_of("prune")
    for name in Recipe.keys():
        flag = "--" + name.replace("_", "-")
        text = helps.get(flag) or helps.get("--no-" + name.replace("_", "-"), "")
        assert len(text.split()) >= 6, f"{flag}: '{text}'"  # meaning, not just a default
        if name not in ("model", "data"):
            assert "(default: " in text, flag
    assert all(len(h.split()) >= 3 for flag, h in helps.items()), helps


@pytest.mark.parametrize("command", ["check", "val", "bench", "train", "demo", "data"])
def test_other_commands_explain_their_options(command):
    for flag, text in _help_of(command).items():
        assert text and not re.fullmatch(r"\(default: .*\)", text), f"{command} {flag}: '{text}'"
