"""Model measurements: parameters, GFLOPs and checkpoint size.

Params and GFLOPs are counted by the model's family the way its papers count them: for Ultralytics
RT-DETR, on the *fused* model (Conv+BN and RepConv branches folded) with Ultralytics' own FLOP
counter, the numbers it prints when it validates a model and what the seed's tables report
(RT-DETR-R18, nc=10, 640: 19.88M, ~57-58 GFLOPs).
"""

from __future__ import annotations

import io

import torch
from torch import nn

from rtdetr_prune.models import family_of


def params_and_gflops(model: nn.Module, imgsz: int = 640) -> tuple[int, float]:
    """Parameters and GFLOPs of one ``imgsz`` x ``imgsz`` image, as the model's family counts them.

    Raises:
        RuntimeError: the counter failed (a count of 0 is refused, not reported).
    """
    return family_of(model).count(model, imgsz)


def gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs of one image at ``imgsz`` x ``imgsz`` (see :func:`params_and_gflops`)."""
    return params_and_gflops(model, imgsz)[1]


def fused(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` (float32, eval, BatchNorm folded where its family does that)."""
    return family_of(model).fused(model)


def size_mb(model: nn.Module) -> float:
    """Size in MB (1e6 bytes) of the model saved as an fp16 state dict, as a checkpoint stores it."""
    buf = io.BytesIO()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, buf)
    return buf.tell() / 1e6
