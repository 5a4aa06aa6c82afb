"""Predict a pruned model's GFLOPs from its layer shapes, without pruning anything.

Convs and linears carry nearly all of RT-DETR's FLOPs, and their cost is a product of widths:
``2 * positions * c_out * c_in / groups * kernel``. Removing units changes only those widths, so the
prediction is exact for them; everything else (attention products, the protected decoder, activations)
is folded into one offset, calibrated against Ultralytics' own count of the current model. The engine
plans each step with this (thousands of candidate plans cost nothing) and then checks the one it
applies with the real count.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from rtdetr_prune.pruning.graph import TracedGraph
from rtdetr_prune.pruning.units import Unit


class FlopPlanner:
    """GFLOPs of ``model`` after removing some units of the groups in ``graph``.

    Args:
        graph: traced graph of ``model`` (the same model object).
        model: the detection model, unpruned by the plans being evaluated.
        imgsz: square image side, pixels.
        exact: Ultralytics' GFLOPs of ``model`` now (the offset is calibrated on it).
    """

    def __init__(self, graph: TracedGraph, model: nn.Module, imgsz: int, exact: float):
        self.shapes = _layer_shapes(model, imgsz)
        self.links: dict[str, list[tuple[nn.Module, str, list[int]]]] = defaultdict(list)
        for group in graph.all_groups():
            key = graph.key(group)
            for item in group:
                m = item.dep.target.module
                if m in self.shapes:
                    side = "out" if graph.DG.is_out_channel_pruning_fn(item.dep.handler) else "in"
                    self.links[key].append((m, side, list(item.root_idxs)))
        self.offset = exact - sum(_gflops(s, 0, 0) for s in self.shapes.values())

    def predict(self, units: list[Unit]) -> float:
        """GFLOPs after removing ``units`` (root-channel indices of their groups)."""
        gone: dict[str, set[int]] = defaultdict(set)
        for u in units:
            gone[u.key].update(u.idxs)
        removed: dict[tuple[nn.Module, str], int] = defaultdict(int)
        for key, idxs in gone.items():
            for m, side, roots in self.links.get(key, ()):
                removed[(m, side)] += sum(1 for r in roots if r in idxs)
        total = self.offset
        for m, s in self.shapes.items():
            total += _gflops(s, removed.get((m, "in"), 0), removed.get((m, "out"), 0))
        return total

    def unit_cost(self, unit: Unit) -> float:
        """First-order GFLOPs saved by removing ``unit`` alone (ignores its overlap with other units)."""
        idxs = set(unit.idxs)
        total = 0.0
        for m, side, roots in self.links.get(unit.key, ()):
            s = self.shapes[m]
            width = s["cin"] if side == "in" else s["cout"]
            total += _gflops(s, 0, 0) / max(1, width) * sum(1 for r in roots if r in idxs)
        return total

    def recalibrate(self, predicted: float, exact: float) -> None:
        """Shift the offset by a measured prediction error (non-conv FLOPs that scale with width)."""
        self.offset += exact - predicted


def layer_gflops(model: nn.Module, imgsz: int) -> dict[nn.Module, float]:
    """GFLOPs of each conv and linear layer for one ``imgsz`` image (2 x multiply-adds)."""
    return {m: _gflops(s, 0, 0) for m, s in _layer_shapes(model, imgsz).items()}


def _layer_shapes(model: nn.Module, imgsz: int) -> dict[nn.Module, dict]:
    """Per conv/linear: widths, groups, kernel size and output positions, from one forward pass."""
    shapes: dict[nn.Module, dict] = {}

    def hook(m, inputs, output):
        if isinstance(m, nn.Linear):
            s = dict(cin=m.in_features, cout=m.out_features, groups=1, k=1, pos=output.numel() // m.out_features)
        else:
            s = dict(cin=m.in_channels, cout=m.out_channels, groups=m.groups, k=math.prod(m.kernel_size),
                     pos=output.numel() // m.out_channels)
        prev = shapes.get(m)
        s["calls"] = 1 + (prev["calls"] if prev else 0)
        shapes[m] = s

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def _gflops(s: dict, less_in: int, less_out: int) -> float:
    """2 x multiply-adds of one layer with ``less_in``/``less_out`` channels removed, in GFLOPs."""
    cin, cout, groups = s["cin"] - less_in, s["cout"] - less_out, s["groups"]
    if groups > 1 and groups == s["cin"] == s["cout"]:  # depthwise: groups shrink with the channels
        cout = min(cin, cout) if less_in or less_out else cout
        per_group_in = 1
    else:
        per_group_in = cin / groups
    return 2.0 * s["calls"] * s["pos"] * cout * per_group_in * s["k"] / 1e9
