"""The zeroed-channel trial: does removing a group's channels remove exactly them?

On a copy of the model, zero some channels of each group, spread over its width (every layer that outputs them
writes zeros, every layer that reads them reads zeros), run it, then remove exactly those channels
and run it again. If Torch-Pruning removed the right channels from every layer, nothing else can
change: the outputs must agree to float32 rounding (~1e-6). A group it maps wrongly (a ``chunk`` of one layer's output,
channels reshaped into attention heads, a scale computed from the width) changes them by 1e-3 or more,
or breaks the forward pass. :mod:`rtdetr_prune.pruning.analysis.prunable` runs it on every candidate group.

Example:
    >>> removal_trial(model, (), ["model.10.cv1.conv"], unit=8, imgsz=64)  # None: exact
"""

from __future__ import annotations

import contextlib
import copy
import math
import zlib

import torch
from torch import nn

from rtdetr_prune.errors import first_line
from rtdetr_prune.models import adapter_of
from rtdetr_prune.pruning.graph import TracedGraph, trace

# Relative output change allowed. The trial runs in float32 (float64 convolutions take a slow path on CPU:
# minutes for rtdetr-l); exact removals then differ by ~1e-6 (summation order), wrong ones by 1e-3 and more.
TOLERANCE = 1e-4
MIN_GAP = 1e-4  # query scores closer than this (relative) may swap under rounding: another trial batch is drawn
TRIAL_INPUTS = 8  # trial batches tried for one without such near-ties
CHANGES = "changes outputs"  # how a trial's message starts when the model runs but its outputs moved
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention, nn.Embedding)  # channels in the last dim


def removal_trial(model: nn.Module, opaque: tuple[type, ...], keys: list[str], unit: int, imgsz: int) -> str | None:
    """On a copy, zero ``unit`` channels of each group (spread over its width, see :func:`spread`), then
    remove exactly them.

    The kept outputs must not change and the model must still run (eval and train). Returns what
    went wrong, or None. BatchNorm statistics are first fitted to a random batch, so that a randomly
    initialized model's activations are not too small to show a difference.
    """
    if not keys:
        return None
    m = copy.deepcopy(model)
    imgsz = adapter_of(m).trial_imgsz(imgsz)
    try:
        graph = trace(m, opaque, imgsz)
        idxs = _trial_units(graph, keys, unit)
        with torch.no_grad():
            x, expected = _expected(graph, idxs, imgsz, next(m.parameters()).device)
            graph.prune(idxs)
            got = graph.adapter.trial_outputs(x)
            m.eval()(x)
            m.train()(x)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        return first_line(e)
    shapes = [(tuple(a.shape), tuple(b.shape)) for a, b in zip(expected, got) if a.shape != b.shape]
    if shapes or len(expected) != len(got):
        return f"{CHANGES} shape ({shapes[0][0]} -> {shapes[0][1]})" if shapes else f"{CHANGES} count"
    change = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(expected, got))
    return f"{CHANGES} by up to {change:.1e} of their size" if change > TOLERANCE else None


def _expected(graph: TracedGraph, idxs: dict[str, list[int]], imgsz: int, device) -> tuple[torch.Tensor, list]:
    """A trial batch (2, 3, imgsz, imgsz) and the zeroed model's outputs on it, BatchNorm fitted to that batch.

    The batch is the first of :data:`TRIAL_INPUTS` seeded random ones on which the family's query selection
    (:meth:`~rtdetr_prune.models.family.Adapter.query_selection`) has no near-tie, else the one with the widest
    margin: near-tied scores swap places under float rounding and would permute the queries of an exact removal.
    """
    region = graph.adapter.region()
    selection = graph.adapter.query_selection()
    best = None
    for seed in range(TRIAL_INPUTS):
        x = torch.randn(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed)).to(device)
        _fit_batchnorm(region, x)
        region.eval()
        scores: list[torch.Tensor] = []
        hook = selection[0].register_forward_hook(lambda m, args, y: scores.append(y)) if selection else None
        try:
            with _zeroed(graph, idxs):
                expected = graph.adapter.trial_outputs(x)
        finally:
            if hook:
                hook.remove()
        gap = ranking_gap([s for s in scores if s.dim() == 3], selection[1]) if selection else math.inf
        if gap >= MIN_GAP:
            return x, expected
        if best is None or gap > best[0]:
            best = (gap, x, expected)
    _, x, expected = best
    _fit_batchnorm(region, x)  # the statistics of the batch kept, not of the last one tried
    region.eval()
    return x, expected


def ranking_gap(scores: list[torch.Tensor], k: int) -> float:
    """The smallest non-zero gap between consecutive anchor scores among the top ``k + 1`` (which decide the
    order and the set of ``k`` selected queries), relative to the largest score's size; inf if none.

    Args:
        scores: score-head outputs, each (B, anchors, classes); an anchor's score is its best class's.
        k: queries selected.

    Exact ties (gap 0) are left out: they come from identical inputs (e.g. masked anchors) and fall the same way
    in both runs.
    """
    gaps = []
    for s in scores:
        top = s.max(-1).values.topk(min(k + 1, s.shape[1]), dim=1).values  # (B, k + 1), descending
        d = top[:, :-1] - top[:, 1:]
        scale = top.abs().max().clamp_min(1e-12)
        gaps += [float(v / scale) for v in d[d > 0].reshape(-1)]
    return min(gaps, default=math.inf)


def _trial_units(graph: TracedGraph, keys: list[str], unit: int) -> dict[str, list[int]]:
    """Each group's ``unit`` trial channels (or the whole aligned blocks, e.g. attention heads, that make up
    as many), spread over its width by :func:`spread`."""
    by_key = {graph.key(g): g for g in graph.all_groups()}
    idxs = {}
    for k in keys:
        out = graph.out_modules(by_key[k])
        block, heads = graph.adapter.channel_block(out), graph.adapter.channel_heads(out)
        if heads > 1:  # as many from every head (e.g. deformable attention's values), spread within each
            w = graph.root_width(by_key[k]) // heads
            idxs[k] = [h * w + i for h in range(heads) for i in spread(f"{k}/{h}", w, -(-unit // heads))]
            continue
        picked = spread(k, graph.root_width(by_key[k]) // block, -(-unit // block))
        idxs[k] = [b * block + i for b in picked for i in range(block)]
    return idxs


def spread(key: str, n: int, k: int) -> list[int]:
    """``k`` of ``range(n)``: the first, the last, then random ones between (seeded by ``key``), sorted.

    A mapping that goes wrong only for later channels (the second half of a split, the last head) is then
    caught too. Seeded by the group's name, a group is tried with the same channels whichever other groups
    share the trial.
    """
    rest = torch.randperm(max(0, n - 2), generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
    order = [0, n - 1][:n] + [1 + int(i) for i in rest]
    return sorted(order[:k])


def _fit_batchnorm(region: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``x`` (one train-mode forward, no updates else)."""
    for bn in region.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        region.train()(x)


@contextlib.contextmanager
def _zeroed(graph: TracedGraph, key_to_idxs: dict[str, list[int]]):
    """Within the block, the given channels of each group read and write zeros.

    Every module whose outputs the group removes has those output channels zeroed; every module
    whose inputs it removes sees them as zeros (channel dim 1; last for Linear-like modules).
    """
    modules = set(graph.adapter.model.modules())
    sides: dict[tuple[nn.Module, bool], set[int]] = {}
    by_key = {graph.key(g): g for g in graph.all_groups()}
    for key, idxs in key_to_idxs.items():
        root = by_key[key][0].dep
        for dep, dep_idxs in graph.DG.get_pruning_group(root.target.module, root.handler, idxs):
            m = dep.target.module
            if m in modules:
                out = graph.DG.is_out_channel_pruning_fn(dep.handler)
                sides.setdefault((m, out), set()).update(int(i) for i in dep_idxs)
    handles = []
    for (m, out), idxs in sides.items():
        idxs = sorted(idxs)
        if out:
            handles.append(m.register_forward_hook(lambda mod, args, y, i=idxs: _zero(y, i, mod)))
        else:
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, i=idxs: (_zero(args[0], i, mod), *args[1:]) if args else None))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _zero(t, idxs: list[int], m: nn.Module):
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return t
    t = t.clone()
    if isinstance(m, _CHANNELS_LAST):
        t[..., idxs] = 0
    else:
        t[:, idxs] = 0
    return t
