"""Can this model be pruned, how much, and what is left alone? (``rtdetr-prune check``)"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rtdetr_prune import metrics, rules
from rtdetr_prune.adapter import DECODER_REASON
from rtdetr_prune.graph import trace
from rtdetr_prune.planner import layer_gflops
from rtdetr_prune.probe import Plan, analyse
from rtdetr_prune.units import group_units


def check_model(model: nn.Module, imgsz: int = 640, round_to: int = 8, max_layer_ratio: float = 0.8,
                plan: Plan | None = None) -> dict:
    """Prunability report of an RT-DETR model.

    Args:
        model: the detection model (not changed).
        imgsz: image side for GFLOPs, pixels.
        round_to: channel unit, as for pruning.
        max_layer_ratio: largest share of a group's channels pruning may remove.
        plan: a precomputed :func:`~rtdetr_prune.probe.analyse` result.

    Returns:
        A JSON-ready dict: ``prunable`` (bool), ``groups`` (prunable group count), ``gflops``,
        ``share`` (fractions of conv/linear GFLOPs in ``prunable``, ``protected`` and ``skipped``
        layers), ``max_speed_up`` (reachable with these settings), ``protected`` and ``skipped``
        (lists of ``{"layer", "reason"}``).
    """
    model = copy.deepcopy(model)
    rewritten = rules.apply_rewrites(model)
    plan = plan or analyse(model, round_to)
    base = metrics.gflops(model, imgsz)
    share = _flops_shares(model, plan, imgsz)
    floor = _prune_to_floor(model, plan, round_to, max_layer_ratio)
    max_speed = base / metrics.gflops(floor, imgsz) if plan.prunable else 1.0
    decoder_index = len(model.model) - 1
    return {
        "prunable": bool(plan.prunable),
        "groups": len(plan.prunable),
        "gflops": round(base, 3),
        "share": {k: round(v, 4) for k, v in share.items()},
        "max_speed_up": round(max_speed, 3),
        "settings": {"imgsz": imgsz, "round_to": round_to, "max_layer_ratio": max_layer_ratio},
        "protected": [{"layer": f"model.{decoder_index}", "reason": DECODER_REASON}],
        "skipped": [{"layer": s.layer, "reason": s.reason} for s in plan.skipped],
        "rewritten": rewritten,
    }


def _flops_shares(model: nn.Module, plan: Plan, imgsz: int) -> dict[str, float]:
    """Shares of conv/linear GFLOPs in layers that shrink, in the protected decoder, and in the rest."""
    cost = layer_gflops(model, imgsz)
    graph = trace(model, plan.opaque_types)
    prunable = set(plan.prunable)
    touched = {m for g in graph.all_groups() if graph.key(g) in prunable for m in graph.touched_modules(g)}
    decoder = set(model.model[-1].modules())
    sums = {"prunable": 0.0, "protected": 0.0, "skipped": 0.0}
    for m, c in cost.items():
        kind = "prunable" if m in touched else "protected" if m in decoder else "skipped"
        sums[kind] += c
    total = sum(sums.values()) or 1.0
    return {k: v / total for k, v in sums.items()}


def _prune_to_floor(model: nn.Module, plan: Plan, unit: int, max_ratio: float) -> nn.Module:
    """A copy with every prunable group cut to its floor (the most pruning can ever remove)."""
    pruned = copy.deepcopy(model)
    graph = trace(pruned, plan.opaque_types)
    keys = set(plan.prunable)
    idxs = {}
    for g in graph.all_groups():
        key = graph.key(g)
        if key in keys:
            width = graph.root_width(g)
            units = group_units(key, torch.arange(width, dtype=torch.float), width, width, unit, max_ratio)
            idxs[key] = [i for u in units for i in u.idxs]
    graph.prune(idxs)
    return pruned
