"""The model-family interface: everything the toolkit needs to know about one kind of RT-DETR.

The pruning engine, ``check``, the pipeline, the benchmarks and the reports never look at model
classes themselves. They ask the model's family (:func:`rtdetr_prune.models.family_of`), and
through it the model's :class:`Adapter`:

- how to load a model from what the user typed, and how to save one (a pickle-free directory, and
  the family's own checkpoint format where it has one);
- which part of the network to trace, which layers to protect and why, what to fix after
  channels are removed (the :class:`Adapter`);
- how to count params and GFLOPs the way the family's papers do (usually on the fused model);
- how to train (finetune, sparse-train) and evaluate it on a YOLO-format dataset;
- how to export it to ONNX with outputs worth comparing between runtimes.

A new family (HuggingFace transformers' RT-DETR, say) is a folder ``models/<family>/`` whose
``__init__`` registers a :class:`ModelFamily` subclass with :func:`rtdetr_prune.models.register`;
nothing in ``pruning/``, ``measure/``, ``bench/`` or the pipeline changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from torch import nn


@dataclass(frozen=True)
class Protected:
    """A part of the model whose output channels are never pruned, with the reason shown to users.

    Attributes:
        layer: its name in the model, as the user knows it (``"model.23"``).
        reason: why, in words.
        modules: every module in it (their output channels are kept).
        kind: what `check` advises for it (a key of its advice table, e.g. "decoder").
    """

    layer: str
    reason: str
    modules: tuple[nn.Module, ...]
    kind: str = "protected"


class Adapter(ABC):
    """What the pruning engine needs to know about one model. Holds the model (no copy)."""

    def __init__(self, model: nn.Module):
        self.model = model

    @abstractmethod
    def region(self) -> nn.Module:
        """The module to trace: images (B, 3, H, W) in, a tensor or list of tensors out. Its
        parameters are the model's own, so pruning the region prunes the model."""

    @abstractmethod
    def region_modules(self) -> Iterable[tuple[str, nn.Module]]:
        """(name in the model, module) for every module inside the traced region."""

    @abstractmethod
    def protected(self) -> list[Protected]:
        """Parts whose output channels are never pruned (e.g. a decoder kept at full width)."""

    def group_veto(self, modules: list[nn.Module]) -> str | None:
        """Why a traced group (given the modules whose *output* channels it removes) must be kept, or None."""
        return None

    def after_prune(self) -> None:
        """Bring cached sizes (attributes some modules keep next to their weights) in line with the weights."""

    def display_name(self, region_name: str) -> str:
        """A module's name in the model as the user sees it, from its name inside :meth:`region`."""
        return region_name

    def protected_modules(self) -> dict[nn.Module, str]:
        """Every protected module, with its reason."""
        return {m: p.reason for p in self.protected() for m in p.modules}


class ModelFamily(ABC):
    """One kind of RT-DETR implementation. Subclasses are stateless; one instance is registered."""

    name: str = ""  # short name, recorded in saved models ("ultralytics")
    library_packages: tuple[str, ...] = ()  # top-level packages of its library: modules from these are not "custom"

    # --- recognizing and loading -------------------------------------------------------------------
    @abstractmethod
    def recognizes(self, spec: str) -> bool:
        """Whether ``spec`` (a name or path the user gave) is one of this family's models."""

    @abstractmethod
    def owns(self, model: nn.Module) -> bool:
        """Whether ``model`` is one of this family's models."""

    @abstractmethod
    def load(self, spec: str, nc: int | None = None) -> nn.Module:
        """Build or load a model (float32, eval mode). ``nc`` sets the classes of a model built from a config."""

    def names(self) -> list[str]:
        """Model names this family builds without a file (its zoo)."""
        return []

    # --- knowledge for the engine ------------------------------------------------------------------
    @abstractmethod
    def adapter(self, model: nn.Module) -> Adapter:
        """The :class:`Adapter` of ``model``."""

    @abstractmethod
    def num_classes(self, model: nn.Module) -> int:
        """Number of classes the model predicts."""

    # --- measuring ---------------------------------------------------------------------------------
    @abstractmethod
    def fused(self, model: nn.Module) -> nn.Module:
        """An inference copy (float32, eval, BatchNorm folded where the family does that); ``model`` unchanged."""

    @abstractmethod
    def count(self, model: nn.Module, imgsz: int) -> tuple[int, float]:
        """(parameters, GFLOPs for one ``imgsz`` x ``imgsz`` image), counted as the family's papers count."""

    @abstractmethod
    def val_map(self, model: nn.Module, data_yaml: str, imgsz: int, batch: int, device: str, workers: int,
                save_dir: str | Path | None = None) -> tuple[float, float]:
        """(mAP50, mAP50-95) on the val split of a YOLO-format dataset; ``model`` unchanged."""

    # --- saving ------------------------------------------------------------------------------------
    @abstractmethod
    def save_safe(self, model: nn.Module, out_dir: str | Path, meta: dict | None = None) -> Path:
        """Save weights and architecture without pickle (loadable by :meth:`load`)."""

    @abstractmethod
    def save_checkpoint(self, model: nn.Module, path: str | Path, train_args: dict | None = None,
                        meta: dict | None = None) -> Path:
        """Save in the format this family's trainers read (for finetuning)."""

    # --- training ----------------------------------------------------------------------------------
    @abstractmethod
    def finetune(self, checkpoint: Path, data: str, epochs: int, project: Path, name: str, resume: bool,
                 **train) -> Path:
        """Finetune a saved checkpoint at its own widths; return the checkpoint to keep."""

    @abstractmethod
    def sparse_train(self, checkpoint: Path, data: str, method: str, epochs: int, project: Path, name: str,
                     resume: bool, sparse: dict, **train) -> Path:
        """Train with a pruning method's sparsity penalty; return the checkpoint to prune."""

    @abstractmethod
    def run_status(self, project: Path, name: str, epochs: int) -> str:
        """Where a training run in ``project/name`` stands: "new", "unfinished" or "finished"."""

    @abstractmethod
    def kept_checkpoint(self, train_dir: Path) -> Path:
        """The checkpoint a finished training run in ``train_dir`` keeps."""

    # --- export ------------------------------------------------------------------------------------
    @abstractmethod
    def export_module(self, fused: nn.Module) -> nn.Module:
        """The view of a fused model that ONNX export and its output check use (no copy).

        Input: images (B, 3, H, W) in [0, 1]. Output: detections (B, K, 6); final-layer boxes
        (1, B, Q, 4) and class logits (1, B, Q, nc); the Q selected anchors' encoder boxes (B, Q, 4) and
        logits (B, Q, nc); then the decoder's projected inputs (B, hidden, H_i, W_i), one per level.
        Attributes: ``levels`` (number of those), ``num_queries`` (Q), and after a PyTorch forward,
        ``anchor_scores`` (B, anchors, nc): the encoder scores the top-Q selection ranked.
        """

