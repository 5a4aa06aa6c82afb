"""Distillation from the unpruned model in Ultralytics' RT-DETR trainer (terms: :mod:`rtdetr_prune.train.distill`).

How it plugs in, through documented extension points only:

- the student's loss criterion (``model.criterion``, which ``RTDETRDetectionModel.loss`` calls and whose
  loss dict it sums) is wrapped by :class:`DistillCriterion`, which adds the distillation terms to the dict;
- forward hooks on the student record its points (decoder input projections, encoder score and box heads)
  and its input images (when decoder pruning narrowed the input projections, the feature term compares the
  encoder's per-anchor features after ``enc_output`` instead, which keep their width); the teacher runs on the same images inside the criterion, without gradients;
- everything is attached in the ``on_train_start`` callback, after Ultralytics has made its EMA copy (so
  neither the EMA nor any saved checkpoint holds the teacher: Ultralytics also drops ``criterion`` when it
  saves), and detached at ``teardown``. The :class:`Distiller` is registered as the trainer's callbacks, so
  Ultralytics' DDP launcher pickles it for its workers, which load the teacher from its path themselves.

Example:
    >>> distiller = Distiller("runs/prune/exp/weights/baseline.pt", DistillOptions())
    >>> trainer = PrunedTrainer(overrides=args, distill=distiller); trainer.train()
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from ultralytics.utils.torch_utils import unwrap_model

from rtdetr_prune.errors import UserError
from rtdetr_prune.models.ultralytics.checkpoint import load_pt
from rtdetr_prune.train.distill import DistillOptions, Recorder, distill_terms, same_place


class _Recorder(Recorder):
    """The distillation points of an Ultralytics RT-DETR, and its input images."""

    def __init__(self, model: nn.Module):
        head = model.model[-1]
        super().__init__(head.input_proj, head.enc_score_head, head.enc_output, head.enc_bbox_head)
        self.images: torch.Tensor | None = None
        self.handles.append(model.model[0].register_forward_pre_hook(self._images))

    def _images(self, module, args):
        self.images = args[0]


class DistillCriterion(nn.Module):
    """The student's RT-DETR loss plus the distillation terms of the same forward pass."""

    def __init__(self, base: nn.Module, distiller: "Distiller"):
        super().__init__()
        self.base = base
        self._distiller = [distiller]  # a list: not a submodule, so the teacher never joins the student's modules

    def forward(self, preds, targets, **kwargs) -> dict[str, torch.Tensor]:
        return {**self.base(preds, targets, **kwargs), **self._distiller[0].terms()}


class Distiller:
    """Distillation as Ultralytics callbacks (see the module docstring).

    Args:
        teacher: path of the teacher's Ultralytics checkpoint (the run's baseline).
        options: the loss weights.
    """

    def __init__(self, teacher: str | Path, options: DistillOptions):
        self.teacher_path = str(Path(teacher).resolve())
        self.options = options
        self.teacher: nn.Module | None = None
        self._student: _Recorder | None = None
        self._teacher: _Recorder | None = None
        self._model: nn.Module | None = None

    def callbacks(self) -> dict:
        """Ultralytics event name -> callback."""
        return {"on_train_start": self.on_train_start, "teardown": self.detach}

    def on_train_start(self, trainer) -> None:
        self.attach(unwrap_model(trainer.model))

    def attach(self, student: nn.Module) -> None:
        """Load the teacher next to ``student`` (same device; fp16 on CUDA), hook both, wrap the criterion."""
        device = next(student.parameters()).device
        teacher = load_pt(Path(self.teacher_path)).to(device).eval().requires_grad_(False)
        self.teacher = teacher.half() if device.type == "cuda" else teacher
        _require_compatible(student, self.teacher, self.teacher_path)
        self._student, self._teacher, self._model = _Recorder(student), _Recorder(self.teacher), student
        student.criterion = DistillCriterion(student.init_criterion(), self)

    def terms(self) -> dict[str, torch.Tensor]:
        """The weighted distillation terms for the student's last forward pass (runs the teacher on its images)."""
        images = self._student.images
        with torch.no_grad():
            self.teacher.predict(images.to(next(self.teacher.parameters()).dtype))
        k = int(self._model.model[-1].num_queries)
        student, teacher = self._student.points(), self._teacher.points()
        same_place(student, teacher)
        terms = distill_terms(student, teacher, self.options, k)
        return {name: value.float() for name, value in terms.items()}

    def detach(self, trainer=None) -> None:
        """Remove the hooks and the criterion wrapper, drop the teacher (``teardown``; also on failure)."""
        for recorder in (self._student, self._teacher):
            if recorder is not None:
                recorder.remove()
        if self._model is not None and isinstance(getattr(self._model, "criterion", None), DistillCriterion):
            self._model.criterion = None  # rebuilt on the next loss call
        self._student = self._teacher = self._model = self.teacher = None

    def __getstate__(self) -> dict:
        """Pickled for DDP workers before training starts: the path and the weights, nothing loaded."""
        return {"teacher_path": self.teacher_path, "options": self.options, "teacher": None, "_student": None,
                "_teacher": None, "_model": None}


def _require_compatible(student: nn.Module, teacher: nn.Module, label: str) -> None:
    """The teacher must predict the same classes with the same decoder query width as the student (its decoder
    inputs may be narrower: decoder pruning's memory width)."""
    s, t = student.model[-1], teacher.model[-1]
    width = lambda head: int(head.enc_output[0].out_features)  # noqa: E731
    if int(s.nc) != int(t.nc) or width(s) != width(t):
        raise UserError(f"Cannot distill from '{label}': it predicts {int(t.nc)} classes with decoder queries "
                        f"{width(t)} wide, the student {int(s.nc)} classes with {width(s)}. The teacher must be "
                        "the model the student was pruned from.")


def registered(callbacks: dict) -> Distiller | None:
    """The :class:`Distiller` among a trainer's callbacks (DDP workers find theirs there), or None."""
    for callback in callbacks.get("on_train_start", []):
        if isinstance(getattr(callback, "__self__", None), Distiller):
            return callback.__self__
    return None
