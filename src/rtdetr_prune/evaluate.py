"""Measure one stage of a run (baseline, pruned, finetuned): the columns of the report table."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune import metrics
from rtdetr_prune.threads import keep_threads


def val_map(model: nn.Module, data_yaml: str, imgsz: int = 640, batch: int = 8, device: str = "",
            workers: int = 2, save_dir: str | Path | None = None) -> tuple[float, float]:
    """mAP50 and mAP50-95 on the data's val split, through Ultralytics' RT-DETR validator.

    The model is copied first (Ultralytics fuses the model it validates, in place). Validation runs on
    the process's thread count, which it keeps (Ultralytics' CPU device selection would leave one).
    """
    from ultralytics.models.rtdetr.val import RTDETRValidator

    save_dir = Path(save_dir or tempfile.mkdtemp(prefix="rtdetr_prune_val_"))
    args = dict(model="rtdetr", data=str(data_yaml), imgsz=imgsz, batch=batch, device=device or None,
                workers=workers, plots=False, save_json=False, verbose=False, split="val",
                project=str(save_dir.parent), name=save_dir.name, exist_ok=True)
    threads = torch.get_num_threads()
    validator = RTDETRValidator(args=args)
    validator.add_callback("on_val_start", lambda _: torch.set_num_threads(threads))  # after device selection
    with keep_threads():
        stats = validator(model=copy.deepcopy(model).float())
    return float(stats["metrics/mAP50(B)"]), float(stats["metrics/mAP50-95(B)"])


def stage_metrics(model: nn.Module, imgsz: int, data_yaml: str | None = None, batch: int = 8, device: str = "",
                  workers: int = 2, latency: bool = True, save_dir: str | Path | None = None) -> dict:
    """One row of the report: params, gflops, size_mb, map50, map50_95, latency_ms (None if not measured)."""
    params, flops = metrics.params_and_gflops(model, imgsz)
    row = {"params": params, "gflops": round(flops, 6), "size_mb": round(metrics.size_mb(model), 3),
           "map50": None, "map50_95": None, "latency_ms": None}
    if data_yaml:
        m50, m5095 = val_map(model, data_yaml, imgsz, batch, device, workers, save_dir)
        row.update(map50=round(m50, 4), map50_95=round(m5095, 4))
    if latency:
        row["latency_ms"] = round(metrics.latency_ms(model, imgsz, batch=8, device=torch_device(device)), 3)
    return row


def torch_device(device: str) -> str:
    """Our device strings ("", "cpu", "0", "0,1") as one torch device for timing."""
    d = (device or "").split(",")[0].strip()
    if d in {"", "cpu"}:
        import torch

        return "cuda:0" if d == "" and torch.cuda.is_available() else "cpu"
    return f"cuda:{d}" if d.isdigit() else d
