"""What `analyse` lets through: groups that break only together, mappings wrong only for later channels;
and tracing leaves the caller's model in the modes it had."""

import pytest
import torch
import torch_pruning as tp
from test_check import ChunkGate
from test_custom_structures import with_block
from torch import nn
from ultralytics.nn.modules.conv import Conv

from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis.prunable import analyse
from rtdetr_prune.pruning.graph import trace


class StaleScale(nn.Module):
    """``x * scale``, one scale per channel, with its width cached at build time in ``c``."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class StaleScalePruner(tp.pruner.BasePruningFunc):
    """Keeps the channels of ``range(layer.c)`` not removed, but never updates ``c`` (the bug): right the first
    time it is called on a layer, out of range the second time."""

    def prune_out_channels(self, layer, idxs):
        keep = [i for i in range(layer.c) if i not in set(idxs)]
        layer.scale = nn.Parameter(layer.scale.data[keep].clone())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.scale.numel()

    get_in_channels = get_out_channels


class TwoBranches(nn.Module):
    """Two 1x1 convs (two channel groups) concatenated into one StaleScale: it is pruned twice only when
    both groups lose channels."""

    def __init__(self, c: int = 64):
        super().__init__()
        self.a, self.b = Conv(c, c // 2, 1), Conv(c, c // 2, 1)
        self.join = StaleScale(c)

    def forward(self, x):
        return self.join(torch.cat([self.a(x), self.b(x)], 1))


def test_groups_that_break_only_together_are_found_and_kept(tiny):
    with rules.scoped():
        rules.prune_rule(StaleScale, StaleScalePruner())
        plan = analyse(with_block(tiny, TwoBranches()), unit=8)
    held = {s.layer: s for s in plan.skipped if s.layer.startswith("model.10.1.")}
    assert set(held) == {"model.10.1.a.conv", "model.10.1.b.conv"}, [s.layer for s in plan.skipped]
    assert {s.kind for s in held.values()} == {"breaks"}
    assert "together with model.10.1.b.conv" in held["model.10.1.a.conv"].reason
    assert "together with model.10.1.a.conv" in held["model.10.1.b.conv"].reason
    assert "model.10.0.cv3.conv" in plan.prunable, "the groups around them still prune"


class Halves(nn.Module):
    """``x * cat([lo, hi])``: one scale per channel, kept as two parameters, one per half of the channels."""

    def __init__(self, c: int):
        super().__init__()
        self.lo = nn.Parameter(torch.linspace(0.5, 1.0, c // 2))
        self.hi = nn.Parameter(torch.linspace(1.5, 2.0, c - c // 2))

    def forward(self, x):
        return x * torch.cat([self.lo, self.hi]).view(1, -1, 1, 1)


class HalvesPruner(tp.pruner.BasePruningFunc):
    """Right for the first half's channels; for the second half its index is off by one (the bug)."""

    def prune_out_channels(self, layer, idxs):
        half, gone = layer.lo.numel(), set(idxs)
        layer.lo = nn.Parameter(layer.lo.data[[i for i in range(half) if i not in gone]].clone())
        layer.hi = nn.Parameter(layer.hi.data[[i for i in range(layer.hi.numel()) if half + i - 1 not in gone]].clone())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.lo.numel() + layer.hi.numel()

    get_in_channels = get_out_channels


def test_a_mapping_wrong_only_for_later_channels_is_caught(tiny):
    with rules.scoped():
        rules.prune_rule(Halves, HalvesPruner())
        plan = analyse(with_block(tiny, Halves(64)), unit=8)
    held = {s.layer: s.kind for s in plan.skipped}
    assert held.get("model.10.0.cv3.conv") in ("breaks", "changes-outputs"), held
    assert "model.10.0.cv3.conv" not in plan.prunable


@pytest.mark.parametrize("opaque", [False, True], ids=["traceable", "with-an-untraceable-module"])
def test_tracing_and_analysis_keep_the_callers_modes(tiny, opaque):
    model = tiny
    if opaque:
        model.model[10] = ChunkGate(model.model[10])
    model.train()
    model.model[3].eval()  # a mixed state, as a caller may keep (e.g. a frozen part)
    before = {n: m.training for n, m in model.named_modules()}
    trace(model, (ChunkGate,) if opaque else ())
    assert {n: m.training for n, m in model.named_modules()} == before
    analyse(model, unit=8)
    assert {n: m.training for n, m in model.named_modules()} == before


def test_ranking_gap_sees_near_ties_in_order_and_at_the_cut_but_not_exact_ties():
    from rtdetr_prune.pruning.analysis.trial import ranking_gap

    def scores(*best):  # (1 image, anchors, 2 classes); the anchor's score is its best class's
        s = torch.tensor(best).view(1, -1, 1)
        return torch.cat([s, s - 5], -1)

    assert ranking_gap([scores(3.0, 2.0, 1.0, 0.0)], k=2) == pytest.approx(1 / 3)
    assert ranking_gap([scores(3.0, 1.0, 1.0, 0.0)], k=2) == pytest.approx(2 / 3), "an exact tie falls one way"
    assert ranking_gap([scores(3.0, 2.0, 2.0 - 3e-6, 0.0)], k=2) == pytest.approx(1e-6, rel=0.1)
    assert ranking_gap([scores(3.0, 2.0, 1.0, 1.0 - 3e-6)], k=3) == pytest.approx(1e-6, rel=0.1), "the k-th vs the next"
    assert ranking_gap([scores(3.0, 2.0, 1.0, 1.0 - 3e-6)], k=1) == pytest.approx(1 / 3), "below the cut: no matter"
    assert ranking_gap([], k=3) == float("inf")


def test_the_plan_does_not_depend_on_the_thread_count():
    """Regression: with 2 threads two anchor scores of this model fell within rounding of each other in the trial,
    swapped places in the decoder's top-k after an exact removal, and every group was skipped ("changes outputs")."""
    from test_custom_structures import YOLO_NECK

    from rtdetr_prune.models import load_model
    from rtdetr_prune.threads import torch_threads

    torch.manual_seed(0)
    model = load_model(YOLO_NECK, nc=3)
    rules.apply_rewrites(model)
    plans = {}
    for n in (1, 2):
        with torch_threads(n):
            plans[n] = analyse(model, 16)
    assert plans[1].prunable == plans[2].prunable
    assert not [s for s in plans[2].skipped if s.kind not in ("narrow", "rtdetr")], plans[2].skipped
