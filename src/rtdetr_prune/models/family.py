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
from typing import TYPE_CHECKING, Iterable

from torch import nn

from rtdetr_prune.measure.layers import conv_linear_gflops

if TYPE_CHECKING:
    from rtdetr_prune.train.distill import DistillOptions


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

    def trial_imgsz(self, imgsz: int) -> int:
        """Image side (pixels, a multiple of 32) to run the whole model at in the zeroed-channel trial, given the
        engine's (small) default: larger for a model that cannot run on small images (a decoder that selects more
        queries than a small image has anchors)."""
        return imgsz

    def channel_block(self, modules: list[nn.Module]) -> int:
        """Channels of a traced group (given the modules whose *output* channels it removes) go in aligned
        blocks of this many: block i is channels [i * n, (i + 1) * n) (e.g. one attention head of n channels
        in q, k and v). Default 1: any channel may go alone."""
        return 1

    def channel_heads(self, modules: list[nn.Module]) -> int:
        """A traced group's channels are viewed as this many equal consecutive heads that must stay equal in
        width (head h is channels [h * w, (h + 1) * w), w = width / heads), so every unit removes the same
        number of channels from each head (e.g. deformable attention's values). Default 1."""
        return 1

    def group_part(self, modules: list[nn.Module]) -> str | None:
        """The optional part of the model (a name the recipe's ``--decoder-parts`` lists, e.g. "ffn") whose
        channels a traced group removes (given the modules whose *output* channels it removes); None for the
        parts always pruned (backbone, encoder)."""
        return None

    def query_selection(self) -> tuple[nn.Module, int] | None:
        """The score head whose (B, anchors, classes) output ranks anchors for a top-k query selection inside
        :meth:`trial_outputs`, and k; None if the compared outputs involve no such selection (default).

        Two anchors whose scores are within float rounding of each other may swap places in the top-k when
        zeroed channels are removed (summation order changes the last bits), which permutes the decoder's
        queries although nothing was mis-pruned; the trial then picks an input without such near-ties."""
        return None

    def trial_outputs(self, images):
        """What the zeroed-channel trial compares before and after removing channels (a list of tensors), in
        eval mode. Default: :meth:`region`'s outputs; a family whose traced groups reach further (a decoder
        replayed on stand-in tensors) adds the model's own outputs."""
        return list(self.region()(images))

    def decoder_layers(self) -> int:
        """Number of decoder layers (0: the family cannot drop any, see :meth:`keep_decoder_layers`)."""
        return 0

    def keep_decoder_layers(self, k: int) -> int:
        """Keep only the first ``k`` decoder layers (in place); return how many were removed.

        Raises:
            UserError: the family cannot drop decoder layers, or ``k`` is out of range.
        """
        from rtdetr_prune.errors import UserError

        raise UserError(f"--decoder-layers: dropping decoder layers is not supported for {type(self.model).__name__} "
                        "models; leave it at 0.")

    def after_prune(self) -> None:
        """Bring cached sizes (attributes some modules keep next to their weights) in line with the weights."""

    def fused_aliases(self) -> dict[str, str]:
        """Layers the family's fused copy (:meth:`ModelFamily.fused`) builds under new names, each mapped to the
        layer of this model whose input and output channels it keeps (its cost follows that layer's widths).
        Default: none (fusing only folds layers away, e.g. a BatchNorm into its conv)."""
        return {}

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
    sparse_picks: tuple[str, ...] = ("best",)  # the recipe's --sparse-pick values :meth:`sparse_checkpoint` serves
    distills: bool = True  # its finetune and sparse_train take ``distill=`` (a teacher checkpoint and loss weights)
    decoder_parts: tuple[str, ...] = ()  # the --decoder-parts its adapter's group_part names (none: decoder kept whole)

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

    def layer_gflops(self, fused: nn.Module, imgsz: int) -> dict[str, float]:
        """GFLOPs :meth:`count` charges each layer of ``fused`` (a :meth:`fused` copy) for its own work, by
        name in ``fused``; layers charged nothing may be left out. The pruning planner scales these with the
        layers' widths, so they must be what :meth:`count` adds up. Default: 2 x multiply-adds of every conv
        and linear layer (override it when :meth:`count` charges anything else)."""
        names = {m: n for n, m in fused.named_modules()}
        return {names[m]: g for m, g in conv_linear_gflops(fused, imgsz).items()}

    def loss(self, model: nn.Module, batch: dict):
        """The training loss of ``model`` on an Ultralytics training batch (``img`` (B, 3, H, W) in [0, 1],
        ``batch_idx``, ``cls``, ``bboxes`` normalized xywh), for gradient-based criteria; summed before backward.
        Default: Ultralytics' ``model.loss(batch)`` contract."""
        return model.loss(batch)[0]

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
                 distill: tuple[Path, DistillOptions] | None = None, **train) -> Path:
        """Finetune a saved checkpoint at its own widths; return the checkpoint to keep.

        ``distill``: (teacher checkpoint, loss weights) to distil from while training
        (:mod:`rtdetr_prune.train.distill` has the terms); ``train``: imgsz, batch, device, workers, seed.
        """

    @abstractmethod
    def sparse_train(self, checkpoint: Path, data: str, method: str, epochs: int, project: Path, name: str,
                     resume: bool, sparse: dict, distill: tuple[Path, DistillOptions] | None = None,
                     **train) -> Path:
        """Train with a pruning method's sparsity penalty; return the checkpoint to prune (``distill`` as above).

        A family with "prunable" in :attr:`sparse_picks` also takes ``probe=`` (a
        :class:`~rtdetr_prune.models.ultralytics.prunability.PruneProbe`) and ``pick=``.
        """

    @abstractmethod
    def run_status(self, project: Path, name: str, epochs: int) -> str:
        """Where a training run in ``project/name`` stands: "new", "unfinished" or "finished"."""

    @abstractmethod
    def kept_checkpoint(self, train_dir: Path) -> Path:
        """The checkpoint a finished training run in ``train_dir`` keeps."""

    def sparse_checkpoint(self, train_dir: Path, pick: str) -> Path:
        """The epoch of a finished sparse-training run in ``train_dir`` that ``pick`` (one of :attr:`sparse_picks`)
        names. Default: the kept checkpoint (the family's "best")."""
        return self.kept_checkpoint(train_dir)

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

