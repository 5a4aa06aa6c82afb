"""A transformers RT-DETR behind Ultralytics' detection-model contract, so Ultralytics' trainer and validator run it.

Why this route and not transformers' ``Trainer``: with it, a transformers model is finetuned, sparse-trained
and validated by the same code as an Ultralytics one (the same YOLO-format data loading and augmentation,
optimizer, schedule, EMA, best-epoch choice by mAP50-95, resume, sparsity callbacks and mAP), so the two
families' reports compare, and the toolkit needs no second training stack. The contract is small:

- ``view(images)`` (B, 3, H, W) in [0, 1] -> detections (B, queries, 6): ``cx, cy, w, h`` (normalized), score,
  class, the top ``queries`` of all (query, class) sigmoid scores, as transformers' ``post_process_object_detection``
  ranks them and as Ultralytics' RT-DETR decoder returns them;
- ``view(batch)`` / ``view.loss(batch)`` -> (loss, {"giou_loss", "cls_loss", "l1_loss"}) from an Ultralytics
  batch (``img``, ``batch_idx``, ``cls``, ``bboxes`` normalized xywh). The loss is transformers' own
  (``RTDetrForObjectDetection(pixel_values, labels=...)``: its Hungarian matcher, varifocal, L1 and GIoU
  terms, auxiliary and denoising losses), not Ultralytics': the model trains with the objective it was built for;
- ``nc``, ``names``, ``stride``, ``task``, ``yaml``, ``criterion`` attributes, ``set_head_attr()`` and ``fuse()``,
  which Ultralytics reads.

The view holds the transformers model as ``view.hf`` (no copy); its parameters are the model's.
"""

from __future__ import annotations

import torch
from torch import nn


class DetectionView(nn.Module):
    """A transformers RT-DETR with Ultralytics' detection-model interface (see the module docstring)."""

    def __init__(self, hf: nn.Module, names: dict | None = None):
        super().__init__()
        self.hf = hf
        self.nc = int(hf.config.num_labels)
        self.names = names or {i: str(hf.config.id2label.get(i, i)) for i in range(self.nc)}
        self.stride = torch.tensor([32.0])  # RT-DETR's largest feature stride; Ultralytics rounds image sizes to it
        self.task = "detect"
        self.yaml = {"channels": 3, "family": "transformers"}  # what Ultralytics reads from a model's YAML
        self.criterion = None  # Ultralytics models keep their loss object here; the view's loss is transformers'
        self.distill = None  # while distilling: images (B, 3, H, W) -> {name: weighted term}, added to the loss

    def forward(self, x, *args, **kwargs):
        """Detections (B, queries, 6) for images; (loss, loss items) for an Ultralytics training batch."""
        return self.loss(x) if isinstance(x, dict) else self.predict(x)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=images)
        return detections(out.pred_boxes, out.logits)

    def loss(self, batch: dict, preds=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """transformers' detection loss on an Ultralytics batch (``preds`` is ignored: the loss needs the
        labels in the forward pass, for the denoising queries)."""
        images = batch["img"]
        out = self.hf(pixel_values=images, labels=targets(batch, len(images), images.device))
        parts, loss = out.loss_dict, out.loss
        distill = getattr(self, "distill", None)  # views pickled before distillation existed lack the attribute
        if distill is not None:
            loss = loss + sum(distill(images).values())
        return loss, {"giou_loss": parts["loss_giou"].detach(), "cls_loss": parts["loss_vfl"].detach(),
                          "l1_loss": parts["loss_bbox"].detach()}

    def set_head_attr(self, **kwargs) -> None:
        """Ultralytics' trainer sets ``max_det`` here; like its RT-DETR decoder outside export, the view returns
        every query's best (query, class) pair regardless, and the validator keeps ``max_det`` of them."""
        self.head_attrs = dict(kwargs)

    def fuse(self, verbose: bool = False) -> "DetectionView":
        """A view of a fused copy (BatchNorm folded), for inference."""
        from rtdetr_prune.models.transformers.counting import fused

        view = DetectionView(fused(self.hf), self.names)
        for attr in ("args", "pt_path"):
            if hasattr(self, attr):
                setattr(view, attr, getattr(self, attr))
        return view


def detections(boxes: torch.Tensor, logits: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Top-``k`` (query, class) pairs by sigmoid score: (B, k, 6) rows of cx, cy, w, h (normalized), score, class.

    Args:
        boxes: (B, queries, 4) normalized cx, cy, w, h.
        logits: (B, queries, nc) class logits.
        k: detections per image (default: as many as queries).
    """
    nc = logits.shape[-1]
    k = min(k or logits.shape[1], logits.shape[1] * nc)
    scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
    query = torch.div(index, nc, rounding_mode="floor")
    picked = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    return torch.cat([picked, scores[..., None], (index - query * nc)[..., None].to(boxes.dtype)], -1)


def targets(batch: dict, images: int, device) -> list[dict[str, torch.Tensor]]:
    """Ultralytics' flat targets as transformers' labels: per image ``class_labels`` (n,) and ``boxes`` (n, 4)
    normalized cx, cy, w, h (the same box convention)."""
    idx = batch["batch_idx"].to(device).view(-1).long()
    cls = batch["cls"].to(device).view(-1).long()
    boxes = batch["bboxes"].to(device).float()
    return [{"class_labels": cls[idx == i], "boxes": boxes[idx == i]} for i in range(images)]
