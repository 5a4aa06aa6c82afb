"""Measure one stage of a run (baseline, pruned, finetuned): the columns of the report table."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.measure import counts
from rtdetr_prune.models import family_of


def val_map(model: nn.Module, data_yaml: str, imgsz: int = 640, batch: int = 8, device: str = "",
            workers: int = 2, save_dir: str | Path | None = None) -> tuple[float, float]:
    """mAP50 and mAP50-95 on the data's val split, by the model's family's validator (``model`` unchanged)."""
    return family_of(model).val_map(model, str(data_yaml), imgsz, batch, device, workers, save_dir)


def stage_metrics(model: nn.Module, imgsz: int, data_yaml: str | None = None, batch: int = 8, device: str = "",
                  workers: int = 2, save_dir: str | Path | None = None) -> dict:
    """One row of the report: params, gflops, size_mb, map50, map50_95 (None if not measured) and
    latency_ms (None: latencies are timed side by side for all stages at the end of a run)."""
    params, flops = counts.params_and_gflops(model, imgsz)
    row = {"params": params, "gflops": round(flops, 6), "size_mb": round(counts.size_mb(model), 3),
           "map50": None, "map50_95": None, "latency_ms": None}
    if data_yaml:
        m50, m5095 = val_map(model, data_yaml, imgsz, batch, device, workers, save_dir)
        row.update(map50=round(m50, 4), map50_95=round(m5095, 4))
    return row


def torch_device(device: str) -> str:
    """Our device strings ("", "cpu", "0", "0,1") as one torch device for timing."""
    d = (device or "").split(",")[0].strip()
    if d in {"", "cpu"}:
        return "cuda:0" if d == "" and torch.cuda.is_available() else "cpu"
    return f"cuda:{d}" if d.isdigit() else d
