"""The Ultralytics RT-DETR family: ``RTDETRDetectionModel`` built from Ultralytics YAMLs.

Everything specific to Ultralytics lives in this folder:

- ``adapter``: what to trace (backbone and encoder up to the decoder's input projections), what to
  protect (the decoder, AIFI's embedding width), cached sizes to fix after pruning;
- ``zoo`` (+ ``cfg/``, ``resnet_vd``): models by name, R18/R34 ResNet-vd backbones;
- ``rewrites``: output-preserving rewrites of Ultralytics blocks Torch-Pruning would prune wrongly (C2f);
- ``checkpoint`` (.pt, a pickle) and ``safe`` (safetensors + JSON spec) formats;
- ``trainer``, ``sparse_trainer``: Ultralytics' RT-DETR trainer, keeping pruned widths; sparse training;
- ``evaluate``: mAP through Ultralytics' validator; ``export``: the ONNX export view.

Importing it registers :data:`FAMILY` (``rtdetr_prune`` does that on import), the zoo's backbones
with torchvision and the built-in rewrites.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from rtdetr_prune import models
from rtdetr_prune.io.safe import family_name, is_safe_dir
from rtdetr_prune.models.family import ModelFamily
from rtdetr_prune.models.ultralytics import rewrites  # noqa: F401  (registers the built-in rewrites)
from rtdetr_prune.models.ultralytics.adapter import RTDETRAdapter
from rtdetr_prune.models.ultralytics.checkpoint import load_pt, save_checkpoint
from rtdetr_prune.models.ultralytics.evaluate import val_map
from rtdetr_prune.models.ultralytics.safe import load_safe, save_safe
from rtdetr_prune.models.ultralytics.zoo import ZOO, build
from rtdetr_prune.recipe import DECODER_PARTS

NAME = "ultralytics"


class UltralyticsFamily(ModelFamily):
    """Ultralytics' RT-DETR (``ultralytics.nn.tasks.RTDETRDetectionModel``): the seed's models."""

    name = NAME
    library_packages = ("ultralytics",)
    sparse_picks = ("best", "last", "prunable")
    decoder_parts = DECODER_PARTS

    def recognizes(self, spec: str) -> bool:
        path = Path(spec)
        if spec in ZOO or path.suffix.lower() in {".yaml", ".yml", ".pt"}:
            return True
        if is_safe_dir(path):
            return family_name(path) in (None, NAME)  # None: unreadable; our loader says why
        return path.is_dir() and not (path / "config.json").exists()  # a folder that is not another family's

    def owns(self, model: nn.Module) -> bool:
        from ultralytics.nn.modules.head import RTDETRDecoder

        layers = getattr(model, "model", None)
        return isinstance(layers, nn.Sequential) and len(layers) > 0 and isinstance(layers[-1], RTDETRDecoder)

    def load(self, spec: str, nc: int | None = None) -> nn.Module:
        path = Path(spec)
        if spec in ZOO or path.suffix.lower() in {".yaml", ".yml"}:
            return build(spec, nc)
        if path.suffix.lower() == ".pt":
            return load_pt(path)
        return load_safe(path)

    def names(self) -> list[str]:
        return list(ZOO)

    def adapter(self, model: nn.Module) -> RTDETRAdapter:
        return RTDETRAdapter(model)

    def num_classes(self, model: nn.Module) -> int:
        return int(model.model[-1].nc)

    def fused(self, model: nn.Module) -> nn.Module:
        m = copy.deepcopy(model).float().eval()
        return m.fuse(verbose=False)

    def count(self, model: nn.Module, imgsz: int) -> tuple[int, float]:
        """Params and GFLOPs of the fused model, by Ultralytics' own counter (what it prints at validation).

        Raises:
            RuntimeError: the counter failed (Ultralytics reports failure as 0.0; we refuse to).
        """
        from ultralytics.utils.torch_utils import get_flops

        fused = self.fused(model)
        value = get_flops(fused, imgsz)
        if not value or value <= 0:
            raise RuntimeError(f"Ultralytics' FLOP counter failed on this model at imgsz={imgsz} (it returned {value}). "
                               "Check that the model runs on a zero image of that size.")
        return sum(p.numel() for p in fused.parameters()), float(value)

    def layer_gflops(self, fused: nn.Module, imgsz: int) -> dict[str, float]:
        """What Ultralytics' counter (THOP) charges each layer for its own work: its per-layer record of one
        full-size image (the total it extrapolates from small images is the sum of these)."""
        import thop
        import torch

        image = torch.zeros(1, 3, imgsz, imgsz, device=next(fused.parameters()).device)
        tree = thop.profile(fused, inputs=(image,), verbose=False, ret_layer_info=True)[2]
        found: dict[str, float] = {}

        def walk(children: dict, prefix: str) -> None:  # a node's ops include its children's
            for name, (ops, _, grand) in children.items():
                own = ops - sum(g[0] for g in grand.values())
                if own:
                    found[prefix + name] = 2.0 * own / 1e9
                walk(grand, f"{prefix}{name}.")

        walk(tree, "")
        return found

    def val_map(self, model, data_yaml, imgsz, batch, device, workers, save_dir=None) -> tuple[float, float]:
        return val_map(model, data_yaml, imgsz, batch, device, workers, save_dir)

    def save_safe(self, model: nn.Module, out_dir, meta: dict | None = None) -> Path:
        return save_safe(model, out_dir, meta)

    def save_checkpoint(self, model: nn.Module, path, train_args: dict | None = None, meta: dict | None = None) -> Path:
        return save_checkpoint(model, path, train_args, meta)

    def finetune(self, checkpoint, data, epochs, project, name, resume, distill=None, **train) -> Path:
        from rtdetr_prune.models.ultralytics.trainer import finetune

        trainer = finetune(checkpoint, data, epochs, project=project, name=name, resume=resume, exist_ok=True,
                           distill=_distiller(distill), **train)
        return trainer.best if trainer.best.is_file() else trainer.last

    def sparse_train(self, checkpoint, data, method, epochs, project, name, resume, sparse: dict, distill=None,
                     pick: str = "best", probe=None, **train) -> Path:
        from rtdetr_prune.models.ultralytics.sparse_trainer import sparse_train

        return sparse_train(checkpoint, data, method, epochs, project=project, name=name, resume=resume,
                            exist_ok=True, distill=_distiller(distill), pick=pick, probe=_probe(probe), **sparse,
                            **train)

    def run_status(self, project: Path, name: str, epochs: int) -> str:
        from rtdetr_prune.models.ultralytics.trainer import run_status

        return run_status(Path(project) / name / "weights" / "last.pt", epochs)

    def kept_checkpoint(self, train_dir: Path) -> Path:
        best = Path(train_dir) / "weights" / "best.pt"
        return best if best.is_file() else Path(train_dir) / "weights" / "last.pt"

    def sparse_checkpoint(self, train_dir: Path, pick: str) -> Path:
        from rtdetr_prune.models.ultralytics.sparse_trainer import picked

        return picked(train_dir, pick)

    def export_module(self, fused: nn.Module) -> nn.Module:
        from rtdetr_prune.models.ultralytics.export import RawOutputs

        return RawOutputs(fused)



def _distiller(distill):
    """A :class:`~rtdetr_prune.models.ultralytics.distiller.Distiller` from (teacher path, options), or None."""
    if distill is None:
        return None
    from rtdetr_prune.models.ultralytics.distiller import Distiller

    return Distiller(*distill)


def _probe(probe: dict | None):
    """A :class:`~rtdetr_prune.models.ultralytics.prunability.PruneProbe` from (method, options, plan), or None."""
    if probe is None:
        return None
    from rtdetr_prune.models.ultralytics.prunability import PruneProbe

    return PruneProbe(probe["method"], probe["options"], probe.get("plan"))


FAMILY = models.register(UltralyticsFamily())
__all__ = ["FAMILY", "UltralyticsFamily"]
