"""A user's own RT-DETR modules, as they would sit in a research repository.

Three blocks the toolkit does not know, each a different problem for the pruner:

- ``QKVAttention``: self-attention over a feature map with separate q, k, v 1x1 convs split into heads.
  It traces, but removing arbitrary channels would mix the heads: the toolkit finds that and skips it.
- ``ScaledResidual``: ``x + gamma * conv(x)`` with a learnable per-channel ``gamma`` (LayerScale).
  Torch-Pruning does not know how to slice ``gamma``: the groups around it are skipped.
- ``PartialGate``: chunks one conv's output in two and gates one half by the other, then
  concatenates. Torch-Pruning 1.6.1 cannot trace it at all: it is kept whole.

Importing this file (or ``--plugin examples/my_modules.py``) also makes the three names known to
Ultralytics' YAML parser, so ``examples/rtdetr-my-modules.yaml`` builds. It registers no pruning
rules: those are in ``my_rules.py``.
"""

import torch
from torch import nn
from ultralytics.nn import tasks
from ultralytics.nn.modules.conv import Conv


class QKVAttention(nn.Module):
    """Multi-head self-attention over all positions, plus a residual. Input and output (B, c, H, W)."""

    def __init__(self, c: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (f(x).view(b, self.heads, -1, h * w) for f in (self.q, self.k, self.v))  # B, heads, d, N
        attn = (q.transpose(-2, -1) @ k * q.shape[2] ** -0.5).softmax(-1)  # B, heads, N, N
        return x + self.proj((v @ attn.transpose(-2, -1)).view(b, c, h, w))


class ScaledResidual(nn.Module):
    """``x + gamma * conv(x)``: a 3x3 conv branch with a learnable per-channel scale. (B, c, H, W) in and out."""

    def __init__(self, c: int, init: float = 0.1):
        super().__init__()
        self.conv = Conv(c, c, 3)
        self.gamma = nn.Parameter(torch.full((c,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma.view(1, -1, 1, 1) * self.conv(x)


class PartialGate(nn.Module):
    """One 1x1 conv, chunked: ``[a * sigmoid(b), b]``. (B, c, H, W) in and out; c even."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).chunk(2, 1)
        return torch.cat([a * b.sigmoid(), b], 1)


# Ultralytics' parser looks layer names up in the namespace of ultralytics.nn.tasks; this is how a
# model YAML can name our modules without editing Ultralytics. (Its parser passes the YAML args as
# given and assumes the output width equals the input width for modules it does not know.)
for _cls in (QKVAttention, ScaledResidual, PartialGate):
    setattr(tasks, _cls.__name__, _cls)
