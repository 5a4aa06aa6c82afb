"""Every option of a pruning run, in one place: its default and why, its help line, and its check.

The :class:`Recipe` is the only owner of option defaults and validation. The engine's
:class:`~rtdetr_prune.pruning.engine.PruneOptions`, sparse training's
:class:`~rtdetr_prune.train.sparsity.SparseOptions`, every command-line flag and its ``--help`` line
derive from it (:func:`default`, :func:`validate`, :func:`help_line`).

A recipe is built from defaults, then a YAML file over them, then command-line flags (or Python
keyword arguments) over that. Unknown keys are rejected with the nearest valid key, and values are
never silently coerced: ``epochs: 2.7`` or ``latency: null`` is an error, not 2 or False. The merged
recipe is saved into every run directory as ``recipe.yaml``, so any run can be repeated with
``--config runs/prune/exp/recipe.yaml``.

Example:
    >>> recipe = load_recipe("recipe.yaml", {"speed_up": 2.0})
    >>> recipe.validate().speed_up
    2.0
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import yaml

from rtdetr_prune.errors import UserError, first_line, suggest

Check = Callable[[object], "str | None"]  # value -> what is wrong with it (None: fine)
REG_SCHEDULES = ("constant", "linear", "step")


def _option(default, help: str, check: Check | None = None, choices: tuple[str, ...] | Callable = (),
            shown: str | None = None):
    """A recipe field: ``help`` is the --help line (meaning, unit, when to change it); ``check`` returns
    what is wrong with a value; ``choices`` (or a function returning them) are the valid strings;
    ``shown`` is how --help shows the default ("" for none: a required option)."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices, "shown": shown})


def _at_least(lo: float, hint: str = "") -> Check:
    return lambda v: None if v >= lo else f"must be at least {lo:g} (got {v}){hint}"


def _between(lo: float, hi: float, closed: bool = False, hint: str = "") -> Check:
    def check(v):
        ok = lo <= v <= hi if closed else lo < v < hi
        return None if ok else f"must be between {lo:g} and {hi:g}{' inclusive' if closed else ''} (got {v}){hint}"
    return check


def _imgsz(v) -> str | None:
    return None if v > 0 and v % 32 == 0 else f"must be a positive multiple of 32 (got {v}); RT-DETR downsamples by 32"


def _speed_up(v) -> str | None:
    return None if v > 1.0 else f"must be greater than 1 (got {v}); e.g. 1.5 for 1.5x fewer GFLOPs"


def _not_empty(v) -> str | None:
    return None if v.strip() else "must not be empty"


def _methods() -> tuple[str, ...]:
    from rtdetr_prune.pruning.methods import METHODS  # late: methods import Torch-Pruning

    return tuple(METHODS)


@dataclass
class Recipe:
    """Every option of ``rtdetr-prune prune``. Each default says why."""

    model: str = _option("", "the trained model: zoo name, RT-DETR .yaml, .pt checkpoint or saved model "
                         "directory (required)", shown="")
    data: str = _option("", "YOLO-format data YAML: its val split gives mAP, its train split finetunes and feeds "
                        "gradient criteria (required)", shown="")
    method: str = _option("lamp", "pruning criterion; lamp needs no sparse training and no gradients and was "
                          "strongest in the seed's tables", choices=_methods)
    speed_up: float = _option(1.5, "target: baseline GFLOPs / pruned GFLOPs; 1.5 lost 1-2 mAP points before "
                              "finetuning in the seed's tables, 2 and more need longer finetuning", _speed_up)
    max_steps: int = _option(50, "safety stop on pruning steps; at --step-ratio 0.1, 2x takes 5-8 steps",
                             _at_least(1))
    step_ratio: float = _option(0.1, "share of each group's channels removed per step (0-1); smaller steps let "
                                "data-driven criteria re-score in between, at more steps", _between(0, 1))
    global_pruning: bool = _option(False, "rank channels across all layer groups instead of taking the same share "
                                   "of each; per-group is safer for detection heads")
    round_to: int = _option(16, "channel counts stay multiples of this: CPU conv kernels block channels by 16 "
                            "(docs/benchmarks.md), GPUs and NPUs by 8 or 16; use 8 for narrow models",
                            _at_least(1, "; e.g. 16, or 8 for narrow models"))
    max_layer_ratio: float = _option(0.8, "largest share (0-1) of one group's channels pruning may remove; keeps "
                                     "every path alive. Raise it to reach deeper cuts", _between(0, 1))
    tolerance: float = _option(0.03, "how far past the target the last step may land, as a share of the target "
                               "(0.03: up to 3% past)", _at_least(0))
    grad_batches: int = _option(8, "data batches per pruning step for group_taylor and group_hessian; more is "
                                "steadier and slower", _at_least(1))
    epochs: int = _option(50, "finetune epochs after pruning (0 skips finetuning); RT-DETR needs tens of epochs "
                          "to recover", _at_least(0))
    sparse_epochs: int = _option(30, "sparse-training epochs before pruning, for slim, group_slim, group_sl and "
                                 "group_reg (other methods ignore it)", _at_least(0))
    reg: float = _option(5e-4, "sparsity penalty strength at the first sparse epoch (the seed's default); usual "
                         "range 1e-5 to 1e-2", _between(0, 1, closed=True))
    delta_reg: float = _option(1e-4, "group_reg only: growth of the penalty of the weakest channels per epoch",
                               _between(0, 1, closed=True))
    reg_schedule: str = _option("constant", "how --reg changes over the sparse epochs: constant, linear (down to "
                                "0) or step (halved at 50% and 75%)", choices=REG_SCHEDULES)
    sparse_model: str = _option("", "a sparse-trained checkpoint of this model to prune instead of sparse "
                                "training again (sparse methods only)", shown="none: sparse-train")
    imgsz: int = _option(640, "image side for training, validation and GFLOPs, pixels (multiple of 32)", _imgsz)
    batch: int = _option(8, "images per batch for training, validation and gradient criteria; lower it if "
                         "memory runs out", _at_least(1))
    device: str = _option("", '"" picks the first GPU, else the CPU; "cpu", "0", or "0,1" for multi-GPU (DDP)',
                          shown='"": auto')
    workers: int = _option(2, "data-loading worker processes (0: load in the main process)", _at_least(0))
    project: str = _option("runs/prune", "runs go to PROJECT/NAME; an existing run is never overwritten "
                           "(NAME2, NAME3... instead)", _not_empty)
    name: str = _option("exp", "run name under --project", _not_empty)
    seed: int = _option(0, "random seed: same seed, data and options give the same pruned channels")
    latency: bool = _option(True, "time batch-8 latency of every stage side by side at the end (seconds on CPU)")
    val: bool = _option(True, "measure mAP of every stage on the data's val split (turn off to save time)")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def updated(self, values: dict, source: str = "options") -> "Recipe":
        """A copy with ``values`` applied; unknown keys and values of the wrong type raise with a hint."""
        known = {f.name: f for f in fields(self)}
        clean = {}
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in known:
                raise UserError(f"Unknown option '{key}' in {source}.{suggest(k, known)} Valid options: {', '.join(known)}.")
            clean[k] = coerce(k, value, type(default(k)), source)
        return dataclasses.replace(self, **clean)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Recipe":
        """Raise a UserError naming the first impossible value and how to fix it; return self."""
        validate(self)
        check_device(self.device)
        return self


FIELDS = {f.name: f for f in fields(Recipe)}


def default(name: str):
    """The default of recipe option ``name`` (what every other option object uses)."""
    return FIELDS[name].default


def help_line(name: str) -> str:
    """The --help line of option ``name``: meaning, unit, when to change it, and its default."""
    f = FIELDS[name]
    choices = _choices(f)
    listed = f" One of: {', '.join(choices)}." if choices else ""
    shown = f.metadata.get("shown")
    shown = repr(f.default) if shown is None else shown
    return f"{f.metadata['help']}.{listed}" + (f" (default: {shown})" if shown else "")


def validate(options, names: list[str] | None = None) -> None:
    """Check the attributes of ``options`` that are recipe options (or only ``names``) with the recipe's checks.

    Raises:
        UserError: ``--option-name`` and what is wrong with its value.
    """
    for name in names or [n for n in FIELDS if hasattr(options, n)]:
        problem = check_value(name, getattr(options, name))
        if problem:
            raise UserError(f"--{name.replace('_', '-')} {problem}.")


def check_value(name: str, value) -> str | None:
    """What is wrong with ``value`` for option ``name``, or None."""
    f = FIELDS[name]
    choices = _choices(f)
    if choices and value not in choices:
        return f"must be one of {', '.join(choices)} (got '{value}').{suggest(value, choices)}".rstrip(".")
    check = f.metadata.get("check")
    return check(value) if check else None


def _choices(f) -> tuple[str, ...]:
    c = f.metadata.get("choices") or ()
    return tuple(c() if callable(c) else c)


def coerce(key: str, value, kind: type, source: str = "options"):
    """``value`` as the option's type, refusing anything that would change its meaning.

    Accepted: bool for bool options; int (not bool) for int options; int or finite float for float
    options; str or a path for str options. Refused: null, 2.7 for an int, "yes" for a bool, inf.
    """
    ok = False
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, (str, os.PathLike))
        value = os.fspath(value) if ok else value
    if not ok:
        shown = "null" if value is None else repr(value)
        raise UserError(f"Option '{key}' in {source} must be {_KIND_WORDS[kind]}, got {shown}.")
    return value


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}


def check_device(device: str) -> None:
    """Accept "", "cpu", "mps", or CUDA indices ("0", "0,1") that exist on this machine."""
    import torch

    d = str(device).strip().lower()
    if d in {"", "cpu", "mps"}:
        return
    ids = [x.strip() for x in d.replace("cuda:", "").split(",")]
    if not all(x.isdigit() for x in ids):
        raise UserError(f"--device '{device}' is not understood. Use cpu, 0, or 0,1 for GPUs 0 and 1.")
    count = torch.cuda.device_count()
    missing = [x for x in ids if int(x) >= count]
    if missing:
        have = f"GPUs 0-{count - 1}" if count else "no CUDA GPU"
        raise UserError(f"--device {device}: this machine has {have}. Use --device cpu, or a GPU index that exists.")


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Defaults, then the YAML at ``path`` (if any), then ``overrides`` (e.g. command-line flags)."""
    recipe = Recipe()
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"Recipe '{path}' not found. Give an existing YAML file (a run's recipe.yaml works).")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"Recipe '{path}' is not valid YAML: {first_line(e, with_type=False)}") from e
        if not isinstance(values, dict):
            raise UserError(f"Recipe '{path}' must be a mapping of option: value.")
        recipe = recipe.updated(values, source=str(path))
    return recipe.updated(overrides or {}, source="command-line flags")


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    from rtdetr_prune.io.files import write_text

    write_text(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
