"""Per-layer GFLOPs of a model as it is: the plain conv/linear count (shares in `check`, benchmarks, and the
default a model family gives the pruning planner)."""

from __future__ import annotations

import torch
from torch import nn


def conv_linear_gflops(model: nn.Module, imgsz: int = 640) -> dict[nn.Module, float]:
    """GFLOPs (2 x multiply-adds) of each conv and linear layer of ``model`` as it is (not fused), for one
    ``imgsz`` x ``imgsz`` image; a layer run twice counts twice. The model's mode is left as it was."""
    found: dict[nn.Module, float] = {}

    def hook(m, inputs, y):
        per_output = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * m.weight[0, 0].numel()
        found[m] = found.get(m, 0.0) + 2.0 * y.numel() * per_output / 1e9

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found
