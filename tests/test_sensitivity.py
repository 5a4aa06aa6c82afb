"""Widths by measured sensitivity: the allocation's arithmetic, and the engine spares what the damage score guards."""

import json

import pytest
from conftest import IMGSZ

from rtdetr_prune.pruning.sensitivity import Sensitivity, _at, allocate, measure_curves
from rtdetr_prune.pruning.units import Unit


def _units(key: str, n: int) -> list[Unit]:
    return [Unit(key, (i,), float(i)) for i in range(n)]


def test_damage_is_linear_between_measured_depths():
    curve = [(0, 0.0), (1, 0.1), (3, 0.5)]
    assert _at(curve, 0) == 0 and _at(curve, 2) == pytest.approx(0.3) and _at(curve, 3) == 0.5
    assert _at(curve, 9) == 0.5


def test_allocation_takes_cheapest_damage_per_gflop_in_each_groups_order():
    groups = [_units("a", 3), _units("b", 3)]
    curves = {"a": [(0, 0.0), (3, 3.0)],  # 1 per unit
              "b": [(0, 0.0), (1, 0.0), (3, 10.0)]}  # free first unit, then 5 per unit
    saves = lambda u: 1.0  # noqa: E731 - every unit saves 1 GFLOP
    predict = lambda units: 10.0 - len(units)  # noqa: E731
    chosen = allocate(groups, curves, saves, predict, goal=6.0)  # 4 units to go
    assert [(u.key, u.idxs[0]) for u in chosen] == [("b", 0), ("a", 0), ("a", 1), ("a", 2)]
    # a unit that saves more GFLOPs is worth more damage: b's units save 10x as much
    chosen = allocate(groups, curves, lambda u: 10.0 if u.key == "b" else 1.0, predict, goal=8.0)
    assert [u.key for u in chosen] == ["b", "b"]
    assert allocate(groups, {"a": curves["a"]}, saves, predict, goal=0.0) == groups[0], "no curve: not taken"


class _Stop(Exception):
    pass


def test_a_profile_stopped_midway_resumes_from_its_record(tmp_path):
    """Each group's curve is written as it is measured; a second run measures only what the first did not reach,
    and a record of another profile (other units) is measured afresh."""
    groups = [_units("a", 3), _units("b", 6), _units("c", 2)]
    record = tmp_path / "sensitivity.json"
    calls: list[str] = []

    def damage(model, stop_at: int | None = None) -> float:  # model: the units removed (apply's result)
        calls.append(model[0].key if model else "base")
        if stop_at is not None and len(calls) == stop_at:
            raise _Stop
        return float(sum(u.idxs[0] + 1 for u in model))

    apply = lambda model, units: units  # noqa: E731 - the "model" is what was removed
    with pytest.raises(_Stop):
        measure_curves([], groups, apply, lambda m: damage(m, stop_at=6), record)  # base, a x3, b x1, then stop
    whole = measure_curves([], groups, apply, damage)
    calls.clear()
    assert measure_curves([], groups, apply, damage, record) == whole
    assert calls == ["base"] + ["b"] * 3 + ["c"] * 2, "a's curve came from the record"
    calls.clear()
    assert measure_curves([], groups, apply, damage, record) == whole and calls == ["base"]
    calls.clear()
    other = [_units("a", 3)[::-1], *groups[1:]]  # another criterion ranks a's channels the other way
    measure_curves([], other, apply, damage, record)
    assert calls.count("a") == 3 and calls.count("b") == 3, "another profile's record is not reused"


def test_engine_spares_the_group_the_damage_score_guards(tiny):
    """A damage score that only cares about one layer's width: sensitivity pruning leaves that layer whole and still
    lands on the target in one step; uniform shares cut it like every other."""
    from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
    from rtdetr_prune.pruning.methods import get_method

    opts = PruneOptions(speed_up=1.4, imgsz=IMGSZ, round_to=8)
    uniform = prune_to_target(tiny, get_method("l1"), opts)
    cut = [k for k, w in uniform.widths.items() if w < uniform.original_widths[k]]
    guarded = cut[len(cut) // 2]
    width = uniform.original_widths[guarded]
    calls = []

    def damage(model) -> float:
        calls.append(1)
        kept = model.get_submodule(guarded).weight.shape[0]
        return 100.0 * (width - kept) + sum(p.numel() for p in model.parameters()) * 1e-9

    result = prune_to_target(tiny, get_method("l1"), opts, sensitivity=Sensitivity(damage))
    assert result.widths[guarded] == width, "the guarded group keeps every channel"
    assert opts.speed_up <= result.speed_up <= opts.speed_up * (1 + opts.tolerance)
    assert result.steps == 1 and len(calls) > len(cut), "one profile (3 depths per group, plus the base), one step"
    assert any(result.widths[k] != uniform.widths[k] for k in cut if k != guarded)


def test_profiled_steps_measure_again_on_the_partly_pruned_model(tiny, tmp_path):
    """--sensitivity-steps 2: step 1 goes halfway (in log GFLOPs) with one profile, step 2 measures a second one on
    the model step 1 left and lands on the target; each profile keeps its own record."""
    from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
    from rtdetr_prune.pruning.methods import get_method

    models = []

    def damage(model) -> float:
        models.append(sum(p.numel() for p in model.parameters()))
        return models[-1] * 1e-9

    opts = PruneOptions(speed_up=1.6, imgsz=IMGSZ, round_to=8, sensitivity_steps=2)
    sens = Sensitivity(damage, tmp_path / "sensitivity.json")
    result = prune_to_target(tiny, get_method("l1"), opts, sensitivity=sens)
    assert opts.speed_up <= result.speed_up <= opts.speed_up * (1 + opts.tolerance)
    assert result.steps >= 2 and len(sens.profiles) == 2
    assert result.history[1]["speed_up"] == pytest.approx(1.6 ** 0.5, rel=0.05), "step 1 stops halfway"
    whole = sum(p.numel() for p in tiny.parameters())
    assert max(models) == whole and sum(m == whole for m in models) == 1, "the second profile's base: step 1's model"
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("sensitivity.json", "sensitivity-2.json"))
    assert first["units"] != second["units"] and first["curves"] and second["curves"]


def test_pipeline_runs_with_a_sensitivity_profile(data_yaml, tmp_path):
    import rtdetr_prune

    rep = rtdetr_prune.prune(model="rtdetr-tiny", data=data_yaml, method="lamp", speed_up=1.3, epochs=0, imgsz=IMGSZ,
                             batch=4, workers=0, project=str(tmp_path), name="sens", latency=False, val=False,
                             sensitivity=8, device="cpu", round_to=8)
    assert 1.3 <= rep["speed_up_achieved"] <= 1.3 * 1.03 and rep["steps"] == 1
    assert (tmp_path / "sens" / "weights" / "pruned_safe").is_dir()
    record = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())  # the profile, kept with the run
    assert record["curves"] and set(record["curves"]) <= set(record["units"])
    assert all(c[0] == [0, 0.0] and len(c) >= 2 for c in record["curves"].values())


@pytest.mark.parametrize("flag", ["global_pruning", "latency_aware"])
def test_another_cross_group_ranking_asks_to_turn_the_profile_off(flag):
    from rtdetr_prune.errors import UserError
    from rtdetr_prune.recipe import Recipe

    with pytest.raises(UserError, match="--sensitivity 0"):
        Recipe(**{flag: True}).validate()
    assert Recipe(**{flag: True}, sensitivity=0).validate()
