"""Widths by measured sensitivity: the allocation's arithmetic, and the engine spares what the damage score guards."""

import pytest
from conftest import IMGSZ

from rtdetr_prune.pruning.sensitivity import Sensitivity, _at, allocate
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


def test_pipeline_runs_with_a_sensitivity_profile(data_yaml, tmp_path):
    import rtdetr_prune

    rep = rtdetr_prune.prune(model="rtdetr-tiny", data=data_yaml, method="lamp", speed_up=1.3, epochs=0, imgsz=IMGSZ,
                             batch=4, workers=0, project=str(tmp_path), name="sens", latency=False, val=False,
                             sensitivity=8, device="cpu", round_to=8)
    assert 1.3 <= rep["speed_up_achieved"] <= 1.3 * 1.03 and rep["steps"] == 1
    assert (tmp_path / "sens" / "weights" / "pruned_safe").is_dir()


@pytest.mark.parametrize("flag", ["global_pruning", "latency_aware"])
def test_another_cross_group_ranking_asks_to_turn_the_profile_off(flag):
    from rtdetr_prune.errors import UserError
    from rtdetr_prune.recipe import Recipe

    with pytest.raises(UserError, match="--sensitivity 0"):
        Recipe(**{flag: True}).validate()
    assert Recipe(**{flag: True}, sensitivity=0).validate()
