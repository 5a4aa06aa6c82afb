"""Distillation from the unpruned model: the loss terms, whatever trains the student.

The teacher is the model the run started from (the baseline), in eval mode without gradients. Pruning
keeps RT-DETR's decoder interface, so teacher and student meet at two places of the same shape, where no
adapter layer is needed:

- **features**: the decoder's projected inputs, one (B, hidden, H_l, W_l) map per level. Term: squared
  error per level divided by the teacher map's mean square (scale-free: 0 for a perfect student, about
  2 for an unrelated one of the same scale), averaged over levels.
- **queries**: the encoder's per-anchor class logits (B, A, nc) over the same A anchors in both models,
  and its box head's output (deltas) at chosen anchors. Term, on the ``k`` anchors the *teacher* selects
  as decoder queries (its top-k by best class score), so both models are compared at the same points,
  whatever the student would select (each model's box head is run on its own encoder memory there): the binary KL divergence of the student's class probabilities from the teacher's (cross-entropy
  against the teacher's probabilities minus their entropy: 0 for equal logits), summed over classes and
  averaged over queries (as RT-DETR's own class loss), plus the L1 distance of the box deltas
  averaged over queries and coordinates.

Total: ``feat * features + cls * query_cls + box * query_box`` (weights in :class:`DistillOptions`;
defaults 1, 1 and 5 follow RT-DETR's own class/box loss ratio, not a fit to any dataset).

Example:
    >>> terms = distill_terms(student_points, teacher_points, DistillOptions(), k=300)
    >>> loss = sum(terms.values())
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr_prune.recipe import default, validate


@dataclass(frozen=True)
class DistillOptions:
    """Loss weights of distillation. Defaults, meanings and checks are the recipe's (:mod:`rtdetr_prune.recipe`)."""

    distill_feat: float = default("distill_feat")  # decoder-input features
    distill_cls: float = default("distill_cls")  # class logits at the teacher's queries
    distill_box: float = default("distill_box")  # box deltas at the teacher's queries

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_recipe(cls, recipe) -> "DistillOptions":
        """The loss weights of a :class:`~rtdetr_prune.recipe.Recipe` (same names)."""
        return cls(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(cls)})


@dataclass
class Points:
    """What a model gives at the distillation points for one batch.

    Attributes:
        feats: the decoder's projected inputs, one (B, hidden, H_l, W_l) tensor per level.
        logits: encoder class logits of every anchor, (B, A, nc).
        memory: the encoder's per-anchor features that the class and box heads read, (B, A, hidden).
        box_head: the model's encoder box head: (B, k, hidden) -> (B, k, 4) box deltas.
    """

    feats: list[torch.Tensor]
    logits: torch.Tensor
    memory: torch.Tensor
    box_head: Callable[[torch.Tensor], torch.Tensor]


class Recorder:
    """Forward hooks that keep a model's latest outputs at the distillation points; each family names its modules.

    Args:
        input_proj: the decoder's input projections, one per level (outputs (B, hidden, H_l, W_l)).
        score_head: the encoder's class head over every anchor (output (B, A, nc)).
        enc_output: the layer whose output (B, A, hidden) the class and box heads read.
        box_head: the encoder's box head, (B, k, hidden) -> (B, k, 4).
    """

    def __init__(self, input_proj: Iterable[nn.Module], score_head: nn.Module, enc_output: nn.Module,
                 box_head: nn.Module):
        self.feats: dict[int, torch.Tensor] = {}
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._feat(i)) for i, m in enumerate(input_proj)]
        self.handles += [score_head.register_forward_hook(self._out("logits")),
                         enc_output.register_forward_hook(self._out("memory"))]
        self.box_head = box_head

    def _feat(self, i: int):
        return lambda module, args, output: self.feats.__setitem__(i, output)

    def _out(self, key: str):
        return lambda module, args, output: self.out.__setitem__(key, output)

    def points(self) -> Points:
        """The points of the last forward pass."""
        feats = [self.feats[i] for i in sorted(self.feats)]
        return Points(feats, self.out["logits"], self.out["memory"], self.box_head)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def same_place(student: Points, teacher: Points) -> None:
    """When the decoder's input (memory) width was pruned, the projected features differ in shape: compare the
    encoder's per-anchor features after ``enc_output`` instead, which keep the decoder's query width (in place)."""
    if [f.shape for f in student.feats] != [f.shape for f in teacher.feats]:
        student.feats, teacher.feats = [student.memory], [teacher.memory]


def feature_term(student: list[torch.Tensor], teacher: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Mean over levels of mean((s - t)^2) / mean(t^2): 0 when equal, about 2 for independent zero-mean maps
    of the same scale, and the same value whatever the features' scale."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student feature levels vs {len(teacher)} teacher levels")
    terms = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"feature shapes differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        t = t.detach().to(s.dtype)
        terms.append((s - t).pow(2).mean() / (t.pow(2).mean() + eps))
    return torch.stack(terms).mean()


def teacher_queries(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the anchors with the highest best-class logit: the queries the teacher decodes."""
    return logits.detach().amax(-1).topk(min(k, logits.shape[1]), dim=1).indices


def query_terms(student: Points, teacher: Points, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class term, box term) at the teacher's ``k`` selected anchors (see the module docstring)."""
    idx = teacher_queries(teacher.logits, k)  # (B, k)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    s_logits, t_logits = take(student.logits), take(teacher.logits).detach().to(student.logits.dtype)
    t_prob = t_logits.sigmoid()
    # Cross-entropy minus the teacher's own entropy: the binary KL divergence, exactly 0 for equal logits.
    kl = (F.binary_cross_entropy_with_logits(s_logits, t_prob, reduction="none")
          - F.binary_cross_entropy_with_logits(t_logits, t_prob, reduction="none"))
    cls = kl.sum(-1).mean()
    with torch.no_grad():
        t_boxes = teacher.box_head(take(teacher.memory)).to(student.memory.dtype)
    box = (student.box_head(take(student.memory)) - t_boxes).abs().mean()
    return cls, box


def distill_terms(student: Points, teacher: Points, options: DistillOptions, k: int) -> dict[str, torch.Tensor]:
    """The weighted distillation terms, by name (``loss_kd_feat``, ``loss_kd_cls``, ``loss_kd_box``)."""
    cls, box = query_terms(student, teacher, k)
    return {"loss_kd_feat": options.distill_feat * feature_term(student.feats, teacher.feats),
            "loss_kd_cls": options.distill_cls * cls,
            "loss_kd_box": options.distill_box * box}
