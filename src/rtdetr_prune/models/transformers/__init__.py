"""The transformers RT-DETR family: ``RTDetrForObjectDetection`` and ``RTDetrV2ForObjectDetection`` (transformers 5).

Everything specific to transformers lives in this folder:

- ``zoo``: models by name (the papers' ResNet-vd layouts, random weights), from a ``config.json``, or from
  a ``save_pretrained`` folder; frozen backbone BatchNorms become trainable ones;
- ``adapter``: what to trace (backbone and hybrid encoder up to the decoder's input projections), what to
  protect (the decoder, AIFI's embedding width), and AIFI's attention heads as whole-head channel blocks;
- ``counting``: the fused copy and Params/GFLOPs (THOP, as the Ultralytics family counts);
- ``safe``: pruned models as safetensors + JSON spec, loaded back as plain transformers models;
- ``view``, ``trainer``: Ultralytics' detection-model contract over the transformers model, so the
  Ultralytics family's trainers and validator finetune, sparse-train and evaluate it (docs/transformers.md
  says why); ``export``: the ONNX export view.

transformers is an optional dependency (``pip install 'rtdetr-prune[transformers]'``): this module imports
it only when a model of the family is built or loaded. Importing it registers :data:`FAMILY`.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from rtdetr_prune import models
from rtdetr_prune.io.safe import family_name, is_safe_dir
from rtdetr_prune.models.family import ModelFamily

NAME = "transformers"
CLASSES = ("RTDetrForObjectDetection", "RTDetrV2ForObjectDetection")


class TransformersFamily(ModelFamily):
    """HuggingFace transformers' RT-DETR and RT-DETRv2 detectors."""

    name = NAME
    library_packages = ("transformers",)

    def recognizes(self, spec: str) -> bool:
        from rtdetr_prune.models.transformers.zoo import ZOO

        path = Path(spec)
        if spec in ZOO:
            return True
        if is_safe_dir(path):
            return family_name(path) == NAME
        if path.is_dir():
            return (path / "config.json").is_file()
        return path.suffix.lower() == ".json" and path.is_file() and _has_model_type(path)

    def owns(self, model: nn.Module) -> bool:
        from rtdetr_prune.models.transformers.view import DetectionView

        if isinstance(model, DetectionView):
            model = model.hf
        t = type(model)
        return t.__name__ in CLASSES and t.__module__.split(".")[0] == "transformers"

    def load(self, spec: str, nc: int | None = None) -> nn.Module:
        from rtdetr_prune.models.transformers import zoo
        from rtdetr_prune.models.transformers.safe import load_safe

        path = Path(spec)
        if spec in zoo.ZOO:
            return zoo.build(spec, nc)
        if is_safe_dir(path):
            return load_safe(path)
        if path.is_dir() and zoo.has_weights(path):
            return zoo.load_pretrained(path)
        return zoo.from_config_file(path, nc)

    def names(self) -> list[str]:
        from rtdetr_prune.models.transformers.zoo import ZOO

        return list(ZOO)

    def adapter(self, model: nn.Module):
        from rtdetr_prune.models.transformers.adapter import TransformersAdapter

        return TransformersAdapter(_hf(model))

    def num_classes(self, model: nn.Module) -> int:
        return int(_hf(model).config.num_labels)

    def fused(self, model: nn.Module) -> nn.Module:
        from rtdetr_prune.models.transformers.counting import fused

        return fused(_hf(model))

    def count(self, model: nn.Module, imgsz: int) -> tuple[int, float]:
        """Params and GFLOPs of the fused model by THOP, as the Ultralytics family counts (see ``counting``)."""
        from rtdetr_prune.models.transformers.counting import count

        return count(_hf(model), imgsz)

    def loss(self, model: nn.Module, batch: dict):
        from rtdetr_prune.models.transformers.view import DetectionView

        return DetectionView(_hf(model)).loss(batch)[0]

    def val_map(self, model, data_yaml, imgsz, batch, device, workers, save_dir=None) -> tuple[float, float]:
        """mAP through Ultralytics' RT-DETR validator, which runs the model's :class:`DetectionView`."""
        from rtdetr_prune.models.transformers.view import DetectionView
        from rtdetr_prune.models.ultralytics.evaluate import val_map

        return val_map(DetectionView(_hf(model)), data_yaml, imgsz, batch, device, workers, save_dir)

    def save_safe(self, model: nn.Module, out_dir, meta: dict | None = None) -> Path:
        from rtdetr_prune.models.transformers.safe import save_safe

        return save_safe(_hf(model), out_dir, meta)

    def save_checkpoint(self, model: nn.Module, path, train_args: dict | None = None, meta: dict | None = None) -> Path:
        from rtdetr_prune.models.transformers.trainer import save_checkpoint

        return save_checkpoint(_hf(model), path, train_args, meta)

    def finetune(self, checkpoint, data, epochs, project, name, resume, distill=None, **train) -> Path:
        from rtdetr_prune.models.transformers.trainer import finetune

        return finetune(checkpoint, data, epochs, project=project, name=name, resume=resume, exist_ok=True,
                        distill=_distiller(distill), **train)

    def sparse_train(self, checkpoint, data, method, epochs, project, name, resume, sparse: dict, distill=None,
                     **train) -> Path:
        from rtdetr_prune.models.transformers.trainer import sparse_train

        return sparse_train(checkpoint, data, method, epochs, project=project, name=name, resume=resume,
                            exist_ok=True, distill=_distiller(distill), **sparse, **train)

    def run_status(self, project: Path, name: str, epochs: int) -> str:
        from rtdetr_prune.models.ultralytics.trainer import run_status

        return run_status(Path(project) / name / "weights" / "last.pt", epochs)

    def kept_checkpoint(self, train_dir: Path) -> Path:
        """The kept epoch of a finished run, as a safe directory (exported from its best.pt or last.pt)."""
        from rtdetr_prune.models.transformers.trainer import export_kept

        return export_kept(Path(train_dir))

    def export_module(self, fused: nn.Module) -> nn.Module:
        from rtdetr_prune.models.transformers.export import RawOutputs

        return RawOutputs(_hf(fused))


def _hf(model: nn.Module) -> nn.Module:
    """The transformers model itself, also when given inside its Ultralytics view (training)."""
    return getattr(model, "hf", model)


def _distiller(distill):
    """A :class:`~rtdetr_prune.models.transformers.distiller.TransformersDistiller` from (teacher path, loss
    weights), or None."""
    if distill is None:
        return None
    from rtdetr_prune.models.transformers.distiller import TransformersDistiller

    return TransformersDistiller(*distill)


def _has_model_type(path: Path) -> bool:
    """A JSON file that looks like a transformers config (it names a ``model_type``)."""
    try:
        return isinstance(data := json.loads(path.read_text()), dict) and "model_type" in data
    except (OSError, ValueError):
        return False


FAMILY = models.register(TransformersFamily())
__all__ = ["FAMILY", "TransformersFamily"]
