"""The FLOP planner predicts what the family counts (on the fused model), exactly, for every prunable group."""

import pytest
import torch

from rtdetr_prune.measure.counts import gflops
from rtdetr_prune.models import load_model
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis.prunable import analyse
from rtdetr_prune.pruning.engine import _apply
from rtdetr_prune.pruning.graph import trace
from rtdetr_prune.pruning.planner import FlopPlanner
from rtdetr_prune.pruning.units import Unit


@pytest.mark.parametrize("name, unit", [("rtdetr-tiny", 8), pytest.param("rtdetr-r18", 16, marks=pytest.mark.slow)])
def test_single_unit_savings_are_predicted_exactly(name, unit):
    """Removing one unit of any prunable group: predicted GFLOPs saved == counted GFLOPs saved (within 0.1%).

    RepC3's RepConv blocks (whose 1x1 branch the counted, fused model folds into the 3x3 conv) and the
    ResNet-vd shortcuts (an average pool before the 1x1 conv) are where a count of the unfused convs was off."""
    torch.manual_seed(0)
    model = load_model(name, nc=3)
    rules.apply_rewrites(model)
    plan = analyse(model, unit)
    base = gflops(model, 320)
    graph = trace(model, plan.opaque_types)
    width = {graph.key(g): graph.root_width(g) for g in graph.all_groups()}
    planner = FlopPlanner(graph, model, 320, base)
    errors = {}
    for key in plan.prunable:  # the first channel and the last ones: the mapping must hold for both
        u = Unit(key, (0, *range(width[key] - unit + 1, width[key])), 0.0)
        saved = base - gflops(_apply(model, plan, [u]), 320)
        errors[key] = (base - planner.predict([u])) / saved - 1
        assert planner.unit_cost(u) == pytest.approx(saved, rel=1e-3), key
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) < 1e-3, f"{worst}: saving predicted {errors[worst]:+.2%} off"
    assert any(".m." in k for k in plan.prunable) and any("short" in k for k in plan.prunable)  # both kinds tried

