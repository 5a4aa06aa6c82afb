"""Saving models in Ultralytics' checkpoint format, so ``ultralytics.RTDETR(path)`` loads them.

A ``.pt`` file is a pickle: loading one runs code from it. Load ``.pt`` files only from sources you
trust; for untrusted exchange use the safe format (weights + architecture spec, no pickle).
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.files import atomic_path


def save_checkpoint(model: nn.Module, path: str | Path, train_args: dict | None = None, meta: dict | None = None) -> Path:
    """Save ``model`` (float32, so a reload is bit-identical) as an Ultralytics checkpoint, atomically.

    Args:
        model: the detection model.
        path: destination ``.pt``.
        train_args: Ultralytics arguments to store (``data``, ``imgsz``...), read back by ``RTDETR(path)``.
        meta: our own record (method, speed-up, channel widths), under the ``rtdetr_prune`` key.
    """
    import ultralytics

    m = copy.deepcopy(model).float().eval()  # requires_grad kept: torch's attention takes another kernel without it
    ckpt = {
        "date": datetime.now().isoformat(),
        "version": ultralytics.__version__,
        "model": m,
        "ema": None,
        "train_args": {"task": "detect", **(train_args or {})},
        "rtdetr_prune": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
