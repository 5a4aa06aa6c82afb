"""Removing channels that carry exactly nothing must not change the model's output."""

import torch
from conftest import IMGSZ
from torch import nn

from rtdetr_prune.pruning.analysis.prunable import analyse
from rtdetr_prune.pruning.graph import trace
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.pruning.units import group_units


def _conv_only(graph, group) -> bool:
    """Only convs and BatchNorms (plus Torch-Pruning's bookkeeping nodes for adds and concats)."""
    return all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or type(m).__module__.startswith("torch_pruning")
               for m in graph.touched_modules(group))


@torch.no_grad()
def _silence(graph, group, idxs):
    """Make the given root channels exactly zero after every layer that outputs them (conv rows, BN shift)."""
    for item in group:
        m, handler = item.dep.target.module, item.dep.handler
        if not graph.DG.is_out_channel_pruning_fn(handler):
            continue
        sel = torch.tensor([i for i, r in zip(item.idxs, item.root_idxs) if r in idxs], dtype=torch.long)
        if isinstance(m, nn.Conv2d):
            m.weight[sel] = 0
            if m.bias is not None:
                m.bias[sel] = 0
        elif isinstance(m, nn.BatchNorm2d):
            m.bias[sel] = 0
            m.running_mean[sel] = 0


def test_pruning_silenced_channels_keeps_outputs(tiny):
    torch.manual_seed(0)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    plan = analyse(tiny, unit=8)
    graph = trace(tiny, plan.opaque_types)
    chosen = {}
    for group in graph.all_groups():
        key = graph.key(group)
        if key in plan.prunable and _conv_only(graph, group) and len(chosen) < 8:
            idxs = list(range(1, graph.root_width(group), 3))[:8]  # scattered channels
            _silence(graph, group, idxs)
            chosen[key] = idxs
    assert len(chosen) == 8
    widths = {graph.key(g): graph.root_width(g) for g in graph.all_groups()}
    params = sum(p.numel() for p in tiny.parameters())
    tiny.eval()
    with torch.no_grad():
        before = tiny(x)[0]
        graph.prune(chosen)
        after = tiny(x)[0]
    after_graph = trace(tiny)
    new_widths = {after_graph.key(g): after_graph.root_width(g) for g in after_graph.all_groups()}
    assert all(new_widths[k] == widths[k] - len(v) for k, v in chosen.items())  # the channels are really gone
    assert sum(p.numel() for p in tiny.parameters()) < params
    assert (before - after).abs().max().item() <= 1e-4


def test_l1_ranks_silenced_channels_first(tiny):
    graph = trace(tiny)
    group = next(g for g in graph.all_groups() if graph.key(g) == "model.0.m.3.blocks.0.cv1.conv")
    idxs = [3, 9, 17, 20, 21, 25, 30, 31]  # of its 32 channels
    _silence(graph, group, idxs)
    scores = get_method("l1").importance()(group)
    width = graph.root_width(group)
    first = group_units("g", scores, width, width, 8, 0.8)[0]
    assert sorted(first.idxs) == idxs
