"""Schedules: iterative pruning reaches the target in rounds at the same total epochs, keeps the width limits of
the model it started from, reports every round, and an interrupted run continues without redoing a round."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import pytest

from rtdetr_prune import pipeline
from rtdetr_prune.errors import UserError
from rtdetr_prune.pruning.schedule import round_epochs, round_targets, step_target
from rtdetr_prune.recipe import Recipe


@pytest.mark.parametrize("speed_up,rounds", [(1.5, 1), (2.0, 2), (3.0, 3), (2.0, 5)])
def test_round_targets_cut_the_same_factor_each_round_and_end_at_the_target(speed_up, rounds):
    targets = round_targets(speed_up, rounds)
    assert len(targets) == rounds and targets[-1] == speed_up
    factors = [b / a for a, b in zip([1.0, *targets], targets)]
    assert max(factors) - min(factors) < 1e-3, factors


@pytest.mark.parametrize("epochs,rounds", [(0, 3), (1, 3), (10, 3), (30, 4), (7, 7)])
def test_round_epochs_add_up_and_the_last_round_is_longest(epochs, rounds):
    split = round_epochs(epochs, rounds)
    assert len(split) == rounds and sum(split) == epochs
    assert split[-1] == max(split) and max(split) - min(split) <= 1


def test_a_step_always_moves_toward_the_target():
    assert step_target(2.0, 1.0) == 2.0
    assert step_target(2.0, 1.6) == pytest.approx(1.25)
    assert step_target(2.0, 2.1) > 1.0, "a round that landed past its target still asks the engine for a step"


def _recipe(data_yaml, tmp_path, name, **extra) -> Recipe:
    options = dict(model="rtdetr-tiny", data=data_yaml, method="l1", speed_up=1.5, epochs=2, imgsz=160, batch=4,
                   workers=0, device="cpu", project=str(tmp_path), name=name, round_to=8, latency=False, val=False,
                   sensitivity=0)  # rounds and widths here; the profile: test_sensitivity.py
    return Recipe(**{**options, **extra})


def _widths(path) -> dict[str, tuple[int, int]]:
    with open(path, newline="") as f:
        return {r["group"]: (int(r["original"]), int(r["pruned"])) for r in csv.DictReader(f)}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def iterative(data_yaml, tmp_path_factory):
    """An iterative run (2 rounds, 1 finetune epoch each) interrupted at the start of its last finetune, then
    resumed: (report, run directory, round 1's pruned.pt hash and finetune results before the resume)."""
    tmp_path = tmp_path_factory.mktemp("iterative")
    real = pipeline._finetune

    def stop_at_last_round(model, run_dir, recipe, epochs, where=None):
        if where is None:  # the last round finetunes in the run directory itself
            raise KeyboardInterrupt
        return real(model, run_dir, recipe, epochs, where)

    pipeline._finetune = stop_at_last_round
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.prune(_recipe(data_yaml, tmp_path, "it", schedule="iterative", rounds=2))
    finally:
        pipeline._finetune = real
    run = tmp_path / "it"
    before = (_sha(run / "rounds" / "1" / "weights" / "pruned.pt"),
              (run / "rounds" / "1" / "finetune" / "results.csv").read_text())
    report = pipeline.prune(None, resume=run)
    return report, run, before


def test_iterative_prunes_in_rounds_to_the_target_at_the_same_total_epochs(iterative):
    report, run, _ = iterative
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and sum(r["epochs"] for r in rounds) == 2
    assert math.sqrt(1.5) <= rounds[0]["speed_up"] < 1.5 <= rounds[1]["speed_up"]
    assert report["speed_up_achieved"] == rounds[1]["speed_up"] >= 1.5
    assert report["finetuned"]["params"] == report["pruned"]["params"] < report["baseline"]["params"]
    for folder in (run / "rounds" / "1" / "finetune", run / "finetune"):  # one epoch each
        assert len((folder / "results.csv").read_text().strip().splitlines()) == 2, folder


def test_later_rounds_keep_the_limits_of_the_widths_pruning_started_from(iterative):
    _, run, _ = iterative
    first, last = _widths(run / "rounds" / "1" / "widths.csv"), _widths(run / "widths.csv")
    assert first.keys() == last.keys() and {k: o for k, (o, _) in first.items()} == {k: o for k, (o, _) in last.items()}
    for key, (original, pruned) in last.items():
        floor = max(8, 8 * math.ceil(0.2 * original / 8))  # max_layer_ratio 0.8 of the ORIGINAL width, units of 8
        assert min(original, floor) <= pruned <= first[key][1] <= original, (key, original, first[key][1], pruned)
    assert any(pruned < first[key][1] for key, (_, pruned) in last.items()), "the last round pruned further"


def test_an_interrupted_iterative_run_continues_without_redoing_a_round(iterative):
    report, run, (sha, results) = iterative
    assert _sha(run / "rounds" / "1" / "weights" / "pruned.pt") == sha
    assert (run / "rounds" / "1" / "finetune" / "results.csv").read_text() == results
    state = json.loads((run / "state.json").read_text())
    assert len(state["rounds"]) == 1 and {"pruned", "finetuned"} <= set(state)


def test_the_report_shows_every_round_and_each_groups_width(iterative):
    _, run, _ = iterative
    text = (run / "report.md").read_text()
    assert "## Rounds (iterative schedule)" in text and "| 2 | 1.5x | 1 |" in text
    assert "](widths.png)" in text and (run / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_oneshot_reports_no_rounds_and_bad_schedules_are_refused(data_yaml, tmp_path):
    report = pipeline.prune(_recipe(data_yaml, tmp_path, "one", epochs=0))
    assert report["rounds"] == [] and report["schedule"] == "oneshot"
    assert (tmp_path / "one" / "widths.csv").is_file() and not (tmp_path / "one" / "rounds").exists()
    with pytest.raises(UserError, match="iterative"):
        _recipe(data_yaml, tmp_path, "bad", schedule="iterativ").validate()
    with pytest.raises(UserError, match="--rounds"):
        _recipe(data_yaml, tmp_path, "bad", rounds=1).validate()
