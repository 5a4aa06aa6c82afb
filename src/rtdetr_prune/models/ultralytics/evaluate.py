"""mAP of an Ultralytics RT-DETR on a YOLO-format dataset, through Ultralytics' own validator."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.threads import keep_threads


def val_map(model: nn.Module, data_yaml: str, imgsz: int = 640, batch: int = 8, device: str = "",
            workers: int = 2, save_dir: str | Path | None = None) -> tuple[float, float]:
    """mAP50 and mAP50-95 on the data's val split, through Ultralytics' RT-DETR validator.

    The model is copied first (Ultralytics fuses the model it validates, in place). Validation runs on
    the process's thread count, which it keeps (Ultralytics' CPU device selection would leave one).
    Nothing is written outside ``save_dir`` (without one: a temporary folder, removed afterwards).
    """
    if save_dir is None:
        with tempfile.TemporaryDirectory(prefix="rtdetr_prune_val_") as tmp:
            return val_map(model, data_yaml, imgsz, batch, device, workers, tmp)
    from ultralytics.models.rtdetr.val import RTDETRValidator

    args = dict(model="rtdetr", data=str(data_yaml), imgsz=imgsz, batch=batch, device=device or None,
                workers=workers, plots=False, save_json=False, verbose=False, split="val")
    threads = torch.get_num_threads()
    # save_dir given as the validator's documented argument: from `project`/`name` instead, Ultralytics puts a
    # relative project under its own runs directory (runs/detect/<project>/<name>), an empty stray tree.
    validator = RTDETRValidator(save_dir=Path(save_dir).resolve(), args=args)
    validator.add_callback("on_val_start", lambda _: torch.set_num_threads(threads))  # after device selection
    with keep_threads():
        stats = validator(model=copy.deepcopy(model).float())
    return float(stats["metrics/mAP50(B)"]), float(stats["metrics/mAP50-95(B)"])
