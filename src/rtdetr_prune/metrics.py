"""Model measurements: parameters, GFLOPs, checkpoint size and latency.

Params and GFLOPs are those of the *fused* model (Conv+BN and RepConv branches folded), counted by
Ultralytics' own FLOP counter: the numbers Ultralytics prints when it validates a model, which is
what the RT-DETR papers and the seed's tables report (RT-DETR-R18, nc=10, 640: 19.88M, ~57-58 GFLOPs).
"""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters of the fused model (BatchNorm folded into convs)."""
    return sum(p.numel() for p in _fused(model).parameters())


def params_and_gflops(model: nn.Module, imgsz: int = 640) -> tuple[int, float]:
    """:func:`count_params` and :func:`gflops` from one fused copy (fusing copies the model)."""
    fused = _fused(model)
    return sum(p.numel() for p in fused.parameters()), _count_gflops(fused, imgsz)


def gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs of one image at ``imgsz`` x ``imgsz``, fused, as Ultralytics counts them.

    Raises:
        RuntimeError: the counter failed (Ultralytics reports failure as 0.0; we refuse to).
    """
    return _count_gflops(_fused(model), imgsz)


def _count_gflops(fused: nn.Module, imgsz: int) -> float:
    from ultralytics.utils.torch_utils import get_flops

    value = get_flops(fused, imgsz)
    if not value or value <= 0:
        raise RuntimeError(
            f"Ultralytics' FLOP counter failed on this model at imgsz={imgsz} (it returned {value}). "
            "Check that the model runs on a zero image of that size."
        )
    return float(value)


def size_mb(model: nn.Module) -> float:
    """Size in MB (1e6 bytes) of the model saved as an fp16 state dict, as a checkpoint stores it."""
    buf = io.BytesIO()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, buf)
    return buf.tell() / 1e6


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    imgsz: int = 640,
    batch: int = 8,
    device: str | torch.device = "cpu",
    half: bool = False,
    warmup: int = 3,
    repeats: int = 10,
) -> float:
    """Median time per image (ms) of the fused model in eval mode on a batch of ``batch`` images.

    Args:
        model: the detection model (left untouched: a fused copy is timed).
        imgsz: square input side in pixels.
        batch: images per forward pass (8, as in the seed's tables).
        device: "cpu", "cuda", "cuda:0", ...
        half: time in fp16 (CUDA only).
        warmup: untimed passes first (allocators, cuDNN autotune, lazy init).
        repeats: timed passes; the median is reported.
    """
    device = torch.device(device)
    m = _fused(model).to(device).eval()
    x = torch.zeros(batch, 3, imgsz, imgsz, device=device)
    if half:
        m, x = m.half(), x.half()
    for _ in range(warmup):
        m(x)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        m(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0 / batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fused(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).float().eval()
    return m.fuse(verbose=False) if hasattr(m, "fuse") else m

