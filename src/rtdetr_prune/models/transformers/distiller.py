"""Distillation from the unpruned model for transformers RT-DETRs (terms: :mod:`rtdetr_prune.train.distill`).

The same distiller as the Ultralytics family's (:mod:`rtdetr_prune.models.ultralytics.distiller`: Ultralytics
callbacks, attached at ``on_train_start`` after the EMA copy is made, detached at ``teardown``, pickled for DDP
workers as a path), with two differences that come from the model:

- the distillation points are transformers' modules: ``model.decoder_input_proj`` (one per level),
  ``model.enc_output``, ``model.enc_score_head`` and ``model.enc_bbox_head``;
- the loss is transformers' own, computed in :meth:`DetectionView.loss`, not an Ultralytics criterion: the
  distiller sets the view's ``distill`` hook, which the view calls with the batch's images and whose terms it
  adds to the total loss (the loss items Ultralytics logs stay the three detection terms).

The teacher is the run's baseline checkpoint (a :class:`DetectionView` pickle written by the pipeline), in eval
mode without gradients, fp16 on CUDA.

Example:
    >>> distiller = TransformersDistiller("runs/prune/exp/weights/baseline.pt", DistillOptions())
    >>> trainer = TransformersTrainer(overrides=args, distill=distiller); trainer.train()
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.models.ultralytics.distiller import Distiller
from rtdetr_prune.train.distill import Recorder, distill_terms, same_place


def _recorder(hf: nn.Module) -> Recorder:
    m = hf.model
    return Recorder(m.decoder_input_proj, m.enc_score_head, m.enc_output, m.enc_bbox_head)


class TransformersDistiller(Distiller):
    """:class:`~rtdetr_prune.models.ultralytics.distiller.Distiller` for a :class:`DetectionView` student."""

    def attach(self, student: nn.Module) -> None:
        """Load the teacher next to ``student`` (a DetectionView), hook both models, set the view's ``distill``."""
        from rtdetr_prune.models.transformers.trainer import load_checkpoint

        device = next(student.parameters()).device
        teacher = load_checkpoint(Path(self.teacher_path)).to(device).eval().requires_grad_(False)
        self.teacher = teacher.half() if device.type == "cuda" else teacher
        _require_compatible(student.hf, self.teacher, self.teacher_path)
        self._student, self._teacher, self._model = _recorder(student.hf), _recorder(self.teacher), student
        student.distill = self.terms

    def terms(self, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted terms for the student's last forward pass, which ran on ``images`` (B, 3, H, W) in [0, 1];
        runs the teacher on them."""
        with torch.no_grad():
            self.teacher(pixel_values=images.to(next(self.teacher.parameters()).dtype))
        student, teacher = self._student.points(), self._teacher.points()
        same_place(student, teacher)
        terms = distill_terms(student, teacher, self.options, int(self._model.hf.config.num_queries))
        return {name: value.float() for name, value in terms.items()}

    def detach(self, trainer=None) -> None:
        if self._model is not None:
            self._model.distill = None
        super().detach(trainer)


def _require_compatible(student: nn.Module, teacher: nn.Module, label: str) -> None:
    """Same classes and the same decoder query width (``d_model``) as the student."""
    s, t = student.config, teacher.config
    width = lambda hf: int(hf.model.enc_output[0].out_features)  # noqa: E731
    if int(s.num_labels) != int(t.num_labels) or width(student) != width(teacher):
        raise UserError(f"Cannot distill from '{label}': it predicts {int(t.num_labels)} classes with decoder queries "
                        f"{width(teacher)} wide, the student {int(s.num_labels)} classes with {width(student)}. The "
                        "teacher must be the model the student was pruned from.")
