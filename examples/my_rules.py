"""Pruning rules for the modules in ``my_modules.py``: a plugin.

Load it with ``rtdetr-prune check ... --plugin examples/my_modules.py --plugin examples/my_rules.py``
(or ``rtdetr_prune.rules.load_plugin``). It shows the three kinds of rule:

- a **rewrite** of ``QKVAttention`` into per-head projections (same outputs; each head prunes alone);
- a **prune_rule** for ``ScaledResidual``: a Torch-Pruning layer pruner that slices ``gamma`` too;
- a **rewrite** of ``PartialGate`` into two convs, so there is no chunk left to trace.

(``rules.protect(PartialGate, "...")`` would be the fourth: keep it whole, with your reason.)
"""

import torch
import torch_pruning as tp
from my_modules import PartialGate, QKVAttention, ScaledResidual  # found next to this file
from torch import nn

from rtdetr_prune import rules
from rtdetr_prune.models.ultralytics.rewrites import split_conv


# --- 1. Attention split into heads: rewrite it so that every head is its own channel group ---------------
class HeadwiseQKVAttention(nn.Module):
    """``QKVAttention`` computed head by head, with one q/k/v conv per head and the softmax scale fixed.

    Same outputs. Each head's q, k and v channels are now coupled only with each other (and with their
    slice of ``proj``'s inputs), so pruning removes channels inside a head, never across heads; and the
    scale stays that of the trained model instead of following the pruned width.
    """

    def __init__(self, src: QKVAttention):
        super().__init__()
        d = src.q.out_channels // src.heads
        self.scale = d**-0.5

        def per_head(conv: nn.Conv2d) -> nn.ModuleList:
            return nn.ModuleList(_conv_rows(conv, i * d, d) for i in range(src.heads))

        self.q, self.k, self.v, self.proj = per_head(src.q), per_head(src.k), per_head(src.v), src.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads = []
        for q, k, v in zip(self.q, self.k, self.v):
            qi, ki, vi = q(x).flatten(2), k(x).flatten(2), v(x).flatten(2)  # B, d, N
            attn = (qi.transpose(1, 2) @ ki * self.scale).softmax(-1)  # B, N, N
            heads.append((vi @ attn.transpose(1, 2)).view(b, -1, h, w))
        return x + self.proj(torch.cat(heads, 1))


def _conv_rows(conv: nn.Conv2d, start: int, size: int) -> nn.Conv2d:
    """A 1x1 conv computing output channels ``start:start+size`` of ``conv``."""
    new = nn.Conv2d(conv.in_channels, size, 1, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight[start:start + size])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[start:start + size])
    return new


rules.rewrite(QKVAttention, HeadwiseQKVAttention)


# --- 2. A module with its own parameter: tell Torch-Pruning how to slice it -------------------------------
class ScaledResidualPruner(tp.pruner.BasePruningFunc):
    """Removes channels from a ``ScaledResidual``: its conv's inputs and outputs, BatchNorm, and ``gamma``.

    Its input and output are the same channels (``x + ...``), so one function serves both sides.
    """

    def prune_out_channels(self, layer: ScaledResidual, idxs):
        keep = [i for i in range(layer.gamma.numel()) if i not in set(idxs)]
        layer.gamma = nn.Parameter(layer.gamma.data[keep].clone())
        tp.prune_conv_out_channels(layer.conv.conv, idxs)
        tp.prune_batchnorm_out_channels(layer.conv.bn, idxs)
        tp.prune_conv_in_channels(layer.conv.conv, idxs)
        return layer

    prune_in_channels = prune_out_channels  # the same channels: Torch-Pruning couples input and output

    def get_out_channels(self, layer: ScaledResidual):
        return layer.gamma.numel()

    get_in_channels = get_out_channels


rules.prune_rule(ScaledResidual, ScaledResidualPruner())


# --- 3. A module Torch-Pruning cannot trace: rewrite the chunk away ---------------------------------------
class SplitPartialGate(nn.Module):
    """``PartialGate`` with its conv split into one conv per half: same outputs, no chunk."""

    def __init__(self, src: PartialGate):
        super().__init__()
        half = src.conv.conv.out_channels // 2
        self.a, self.b = split_conv(src.conv, [half, half])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b(x)
        return torch.cat([self.a(x) * b.sigmoid(), b], 1)


rules.rewrite(PartialGate, SplitPartialGate)
