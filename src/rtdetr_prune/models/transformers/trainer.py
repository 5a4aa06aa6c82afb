"""Finetuning and sparse training of transformers RT-DETRs with the Ultralytics family's trainers.

The model travels as a :class:`~rtdetr_prune.models.transformers.view.DetectionView` inside an
Ultralytics-format checkpoint (``save_checkpoint``), which Ultralytics' trainer loads, trains at its own
widths (:class:`PrunedTrainer` does not rebuild anything) and saves as ``weights/best.pt`` / ``last.pt``.
Those are pickles only this package reads; the checkpoint a run keeps is exported next to them as a safe
directory (``weights/best_safe``), which is what :func:`finetune` and :func:`sparse_train` return and what
``rtdetr_prune.load_model`` loads.

Example:
    >>> save_checkpoint(model, "runs/hf/start.pt", train_args={"data": "data.yaml", "imgsz": 640})
    >>> best = finetune("runs/hf/start.pt", "data.yaml", epochs=50, imgsz=640, batch=16, device="0",
    ...                 workers=8, project="runs/hf", name="finetune", seed=0)
    >>> model = load_model(best)  # an RTDetrForObjectDetection, finetuned
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.models.transformers.view import DetectionView
from rtdetr_prune.models.ultralytics import checkpoint as ultralytics_checkpoint
from rtdetr_prune.models.ultralytics.sparse_trainer import SparseTrainer
from rtdetr_prune.models.ultralytics.trainer import PrunedTrainer, resumable, train_args
from rtdetr_prune.train.sparsity import SparseOptions


class _TrainsTheView:
    """Mixin for Ultralytics trainers: the model to train is the loaded checkpoint's view, as it is."""

    def get_model(self, cfg=None, weights: nn.Module | None = None, verbose: bool = True):
        """The loaded :class:`DetectionView` itself (float32, trainable).

        Raises:
            UserError: no checkpoint to train (``pretrained=False`` or a config), or the model predicts another
                number of classes than the data has.
        """
        if not isinstance(weights, DetectionView):
            raise UserError("A transformers RT-DETR trains from a checkpoint saved by rtdetr-prune (save_checkpoint); "
                            "leave 'pretrained' at its default.")
        model = self.set_model_names_for_load(weights.float())
        if model.nc != self.data["nc"]:
            raise UserError(f"'{self.args.model}' predicts {model.nc} classes but the data has {self.data['nc']}. "
                            "Finetune on the data the model was trained on.")
        for p in model.parameters():
            p.requires_grad_(True)  # stripped checkpoints are saved frozen
        return model


class TransformersTrainer(_TrainsTheView, PrunedTrainer):
    """:class:`PrunedTrainer` for a transformers RT-DETR checkpoint."""


class TransformersSparseTrainer(_TrainsTheView, SparseTrainer):
    """:class:`SparseTrainer` (a method's sparsity penalty) for a transformers RT-DETR checkpoint."""


def save_checkpoint(model: nn.Module, path: str | Path, train_args: dict | None = None,
                    meta: dict | None = None) -> Path:
    """Save a transformers RT-DETR in the checkpoint format the trainers read (its :class:`DetectionView`, pickled)."""
    view = model if isinstance(model, DetectionView) else DetectionView(model)
    return ultralytics_checkpoint.save_checkpoint(view, path, train_args, meta)


def load_checkpoint(path: str | Path) -> nn.Module:
    """The transformers model in a training checkpoint (a pickle: load only files you trust)."""
    from ultralytics.nn.tasks import load_checkpoint as load

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint '{path}' not found.")
    view = load(str(path), inplace=False)[0]
    if not isinstance(view, DetectionView):
        raise UserError(f"'{path}' is not a transformers RT-DETR training checkpoint written by rtdetr-prune.")
    return view.hf.float().eval()


def finetune(model_pt, data, epochs: int, imgsz: int, batch: int, device: str, workers: int, project, name: str,
             seed: int, resume: bool = False, distill=None, **overrides) -> Path:
    """Finetune a checkpoint at its own widths; return the kept epoch as a safe directory (see module docstring).

    Arguments as for :func:`rtdetr_prune.models.ultralytics.trainer.finetune`; ``distill``: distil from a teacher
    (:mod:`rtdetr_prune.models.transformers.distiller`).
    """
    args = train_args(model_pt, data, epochs, imgsz, batch, device, workers, project, name, seed, **overrides)
    if resume:
        args["resume"] = str(resumable(Path(args["project"]) / name / "weights" / "last.pt", epochs))
    trainer = TransformersTrainer(overrides=args, distill=distill)
    trainer.train()
    return export_kept(trainer.save_dir)


def sparse_train(model_pt, data, method: str, epochs: int, reg: float, delta_reg: float, reg_schedule: str,
                 imgsz: int, batch: int, device: str, workers: int, project, name: str, seed: int,
                 round_to: int | None = None, resume: bool = False, distill=None,
                 **overrides) -> Path:
    """Sparse-train a checkpoint with a method's penalty; return the kept epoch as a safe directory.

    Arguments as for :func:`rtdetr_prune.models.ultralytics.sparse_trainer.sparse_train` (``distill`` as above).
    """
    unit = {} if round_to is None else {"round_to": round_to}
    options = SparseOptions(method=method, reg=reg, delta_reg=delta_reg, reg_schedule=reg_schedule, **unit)
    args = train_args(model_pt, data, epochs, imgsz, batch, device, workers, project, name, seed, **overrides)
    if resume:
        args["resume"] = str(resumable(Path(args["project"]) / name / "weights" / "last.pt", epochs))
    trainer = TransformersSparseTrainer(overrides=args, sparse=options, distill=distill)
    trainer.train()
    return export_kept(trainer.save_dir)


def export_kept(train_dir: Path) -> Path:
    """The kept checkpoint of a finished run (``best.pt``, else ``last.pt``) as a safe directory next to it."""
    from rtdetr_prune.models.transformers.safe import save_safe

    weights = Path(train_dir) / "weights"
    kept = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    return save_safe(load_checkpoint(kept), weights / f"{kept.stem}_safe", meta={"checkpoint": kept.name})
