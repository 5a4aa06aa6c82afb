"""Built-in output-preserving rewrites of Ultralytics blocks that Torch-Pruning would prune wrongly.

Registered with :func:`rtdetr_prune.pruning.rules.rewrite` when ``rtdetr_prune`` is imported; the engine,
``check`` and the pipeline apply them before analysing a model. Undo one with
``rules.unregister(C2f)``.

What Torch-Pruning 1.6.1 does with the blocks users put into RT-DETR (each checked by removing
channels that were zeroed first: the outputs must not change, see ``tests/test_custom_structures.py``):

- ``C2f``, ``C3k2`` (and ``C2fPSA``, ``C2fCIB``, which share C2f's forward): ``cv1``'s output is cut
  in two by ``.chunk(2, 1)``. Torch-Pruning maps the chunk's channels wrongly (its groups reach past
  the tensor's width), and any uneven removal would shift the cut at run time. Rewritten to
  :class:`SplitC2f`: ``cv1`` becomes two convs, one per half, so there is no chunk left.
- ``SPPF``, ``DWConv`` (depthwise), ``GhostConv``: traced and pruned correctly as they are.
- Grouped convs that are not depthwise (``Conv(..., g=4)``): pruned wrongly (groups are not kept
  equal); :mod:`rtdetr_prune.pruning.analysis.prunable` skips them with a reason.
- Attention that splits q/k/v channels into heads with a reshape: pruned wrongly (heads get mixed).
  The probe finds it by the zeroed-channel trial and skips it; a per-head rewrite of the user's own
  module makes it prunable (docs/custom-structures.md shows one).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from ultralytics.nn.modules.block import C2f, C2fCIB, C2fPSA, C3k2
from ultralytics.nn.modules.conv import Conv

from rtdetr_prune.pruning import rules


class SplitC2f(nn.Module):
    """C2f (and C3k2...) with ``cv1`` split into ``cv0`` and ``cv1``, one conv per half of its old output.

    Same outputs as the block it replaces; each half is now its own channel group.
    Input (B, c1, H, W); output (B, c2, H, W).
    """

    def __init__(self, cv0: nn.Module, cv1: nn.Module, m: nn.ModuleList, cv2: nn.Module):
        super().__init__()
        self.cv0, self.cv1, self.m, self.cv2 = cv0, cv1, m, cv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def split_c2f(block: C2f) -> nn.Module:
    """The :class:`SplitC2f` equivalent of an Ultralytics C2f-style block (its weights, copied).

    A block whose convs were already fused (no BatchNorm) is returned unchanged.
    """
    if not isinstance(getattr(block.cv1, "bn", None), nn.BatchNorm2d):
        return block
    half = block.cv1.conv.out_channels // 2
    cv0, cv1 = split_conv(block.cv1, [half, half])
    return SplitC2f(cv0, cv1, block.m, block.cv2).train(block.training)


def split_conv(conv: Conv, sizes: list[int]) -> list[Conv]:
    """Ultralytics ``Conv`` blocks (conv, BatchNorm, activation) giving consecutive slices of ``conv``'s
    output channels, of the given sizes. Together they compute exactly what ``conv`` did."""
    c, bn = conv.conv, conv.bn
    assert sum(sizes) == c.out_channels and c.groups == 1 and c.bias is None, "an ungrouped Ultralytics Conv"
    parts, start = [], 0
    for size in sizes:
        part = Conv(c.in_channels, size, 1, act=copy.deepcopy(conv.act))
        part.conv = nn.Conv2d(c.in_channels, size, c.kernel_size, c.stride, c.padding, c.dilation, bias=False,
                              padding_mode=c.padding_mode)  # every geometry of the original, tuples included
        part.to(device=c.weight.device, dtype=c.weight.dtype)
        part.bn.eps, part.bn.momentum = bn.eps, bn.momentum
        rows = slice(start, start + size)
        with torch.no_grad():
            part.conv.weight.copy_(c.weight[rows])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(part.bn, name).copy_(getattr(bn, name)[rows])
            part.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        parts.append(part.train(conv.training))
        start += size
    return parts


def register() -> None:
    """Register the built-in rewrites (done once, when ``rtdetr_prune`` is imported)."""
    for cls in (C2f, C3k2, C2fPSA, C2fCIB):
        if cls.forward is C2f.forward:  # same chunk-based forward; a future Ultralytics may change that
            rules.rewrite(cls, split_c2f)


register()
