"""Predict a pruned model's GFLOPs from its layer widths, without pruning anything.

GFLOPs are what the model's family counts (:func:`rtdetr_prune.measure.counts.gflops`): for Ultralytics, on
the *fused* model (BatchNorm folded into convs, each RepConv's 1x1 branch folded into its 3x3 conv). So the
planner starts from the family's own per-layer record of the fused model
(:meth:`~rtdetr_prune.models.ModelFamily.layer_gflops`) and scales each layer's cost with the widths pruning
leaves it: a conv or linear layer's cost is a product of its input and output widths (depthwise: of its one
width), a channel-wise layer's (average pool, a BatchNorm left unfused) is proportional to its width. Layers
the fused model folds away cost nothing. So for removals the prediction is exact; what no width changes (the
protected decoder, attention products) is one offset, calibrated against the family's count of the current
model. The engine plans each step with this (thousands of candidate plans cost nothing) and then checks the
one it applies with the real count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from rtdetr_prune.models import family_of
from rtdetr_prune.pruning.graph import TRACE_IMGSZ, TracedGraph
from rtdetr_prune.pruning.units import Unit


@dataclass(frozen=True)
class _Layer:
    """A layer of the fused model whose cost follows widths pruning changes."""

    gflops: float  # its cost now, as the family counts it
    cin: int
    cout: int
    bilinear: bool  # conv/linear (cost ~ cin * cout); else one width (channel-wise, or depthwise)


class FlopPlanner:
    """GFLOPs of ``model`` after removing some units of the groups in ``graph``.

    Args:
        graph: traced graph of ``model`` (the same model object).
        model: the detection model, unpruned by the plans being evaluated.
        imgsz: square image side, pixels.
        exact: the family's GFLOPs of ``model`` now (the offset is calibrated on it).
        layer_cost: per-layer costs to scale instead of the family's GFLOPs, by name in the fused model (e.g.
            measured milliseconds, :class:`~rtdetr_prune.pruning.latency_aware.LayerCosts`); predictions are then
            in that unit.
    """

    def __init__(self, graph: TracedGraph, model: nn.Module, imgsz: int, exact: float,
                 layer_cost: dict[str, float] | None = None):
        layers, feeds = _counted_layers(model, imgsz, layer_cost)
        # group key -> (layer, side, {root channel: layer channel}) for every counted layer it changes
        self.links: dict[str, list[tuple[nn.Module, str, dict[int, int]]]] = defaultdict(list)
        for group in graph.all_groups():
            key = graph.key(group)
            for item in group:
                m = item.dep.target.module
                if m in layers:
                    side = "out" if graph.DG.is_out_channel_pruning_fn(item.dep.handler) else "in"
                    self.links[key].append((m, side, dict(zip(item.root_idxs, item.idxs))))
        for links in list(self.links.values()):  # a channel-wise layer Torch-Pruning does not track (a pool)
            links += [(pool, "in", idxs) for m, side, idxs in list(links) if side == "in" for pool in feeds.get(m, ())]
        linked = {m for links in self.links.values() for m, _, _ in links}
        self.layers = {m: layers[m] for m in linked}
        self.offset = exact - sum(layer.gflops for layer in self.layers.values())

    def predict(self, units: list[Unit]) -> float:
        """GFLOPs after removing ``units`` (root-channel indices of their groups)."""
        gone: dict[str, set[int]] = defaultdict(set)
        for u in units:
            gone[u.key].update(u.idxs)
        removed: dict[tuple[nn.Module, str], set[int]] = defaultdict(set)
        for key, roots in gone.items():
            for m, side, idxs in self.links.get(key, ()):
                removed[(m, side)].update(idxs[r] for r in roots if r in idxs)
        total = self.offset
        for m, layer in self.layers.items():
            total += _scaled(layer, removed.get((m, "in"), set()), removed.get((m, "out"), set()))
        return total

    def unit_cost(self, unit: Unit) -> float:
        """First-order GFLOPs saved by removing ``unit`` alone (ignores its overlap with other units)."""
        roots = set(unit.idxs)
        total = 0.0
        for m, side, idxs in self.links.get(unit.key, ()):
            layer = self.layers[m]
            width = layer.cin if side == "in" or not layer.bilinear else layer.cout
            total += layer.gflops / max(1, width) * sum(1 for r in roots if r in idxs)
        return total

    def recalibrate(self, predicted: float, exact: float) -> None:
        """Shift the offset by a measured prediction error (a cost this model of widths does not capture)."""
        self.offset += exact - predicted


def _scaled(layer: _Layer, gone_in: set[int], gone_out: set[int]) -> float:
    """A layer's GFLOPs with the given input/output channels removed."""
    if not layer.bilinear:  # one width: input and output channels are the same channels
        return layer.gflops * (layer.cin - len(gone_in | gone_out)) / layer.cin
    return layer.gflops * (layer.cin - len(gone_in)) / layer.cin * (layer.cout - len(gone_out)) / layer.cout


def _counted_layers(model: nn.Module, imgsz: int,
                    layer_cost: dict[str, float] | None = None) -> tuple[dict[nn.Module, _Layer], dict[nn.Module, list]]:
    """The layers of ``model`` that its family's count charges, each with its cost and widths; and, for each
    layer, the channel-wise layers (pools) that feed it directly (their widths are its input's).

    Costs come from the family's fused copy, matched to ``model``'s layers by name (or the adapter's
    :meth:`~rtdetr_prune.models.Adapter.fused_aliases`); layers fused away are absent: they cost nothing.
    """
    family = family_of(model)
    fused = family.fused(model)
    cost = family.layer_gflops(fused, imgsz) if layer_cost is None else layer_cost
    aliases = family.adapter(model).fused_aliases()
    own = dict(model.named_modules())
    twin = {m: own.get(aliases.get(n, n)) for n, m in fused.named_modules()}
    seen = _io_of(family.adapter(fused).region(), TRACE_IMGSZ)  # fused module -> (in width, input id, output id)
    layers: dict[nn.Module, _Layer] = {}
    for n, m in fused.named_modules():
        target = twin.get(m)
        if target is None or not cost.get(n) or m not in seen:
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            cin, cout = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else (m.in_channels, m.out_channels)
            depthwise = isinstance(m, nn.Conv2d) and 1 < m.groups == cin == cout
            layers[target] = _Layer(cost[n], cin, cout, not depthwise)
        elif seen[m][0] is not None:  # channel-wise: same width in and out
            layers[target] = _Layer(cost[n], seen[m][0], seen[m][0], False)
    by_input: dict[int, list[nn.Module]] = defaultdict(list)
    for m, (_, x, _) in seen.items():
        by_input[x].append(m)
    feeds: dict[nn.Module, list[nn.Module]] = defaultdict(list)
    for m, (_, _, y) in seen.items():
        target = twin.get(m)
        if target in layers and not layers[target].bilinear:
            for consumer in by_input.get(y, ()):
                if twin.get(consumer) in layers and consumer is not m:
                    feeds[twin[consumer]].append(target)
    return layers, feeds


def _io_of(region: nn.Module, imgsz: int) -> dict[nn.Module, tuple[int | None, int, int]]:
    """Per module run by one forward of ``region``: (its width if it keeps its input's channel count
    (B, C, H, W) -> (B, C, H', W'), else None; id of its input tensor; id of its output tensor)."""
    found: dict[nn.Module, tuple[int | None, int, int]] = {}
    keep: list[torch.Tensor] = []  # holds the tensors so that their ids stay unique during the pass

    def hook(m, inputs, y):
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return
        keep.extend((x, y))
        same = x.dim() == y.dim() == 4 and x.shape[1] == y.shape[1]
        found[m] = (x.shape[1] if same else None, id(x), id(y))

    handles = [m.register_forward_hook(hook) for m in region.modules()]
    try:
        with torch.no_grad():
            region.eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(region.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return found
