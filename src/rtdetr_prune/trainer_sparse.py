"""Sparse training for the methods that prune after it: slim, group_slim, group_sl, group_reg.

The method's Torch-Pruning pruner supplies the penalty: its ``regularize`` adds the penalty's
gradient to ``.grad``. It is added once per optimizer step, to the loss gradient after Ultralytics
has unscaled and clipped it, right before the step runs: a step pre-hook on the optimizer (PyTorch's
documented hook). Ultralytics' ``optimizer_step`` (unscale, clip, step) stays untouched, gradients
are unscaled once, the penalty is never clipped away, and a step the AMP scaler skips adds nothing.

The penalty's strength follows a schedule over the epochs (:func:`reg_at`). After each epoch the
share of near-zero BatchNorm scales is logged to ``sparsity.csv``; at the end ``sparsity.png`` shows
their distribution in the kept checkpoint, which is Ultralytics' ``best.pt``: its fitness is
mAP50-95 (weights 0, 0, 0, 1 for P, R, mAP50, mAP50-95 in Ultralytics 8.4), ties going to the later epoch.

Example:
    >>> args = train_args("pruned.pt", "data.yaml", 30, 640, 16, "0", 8, "runs", "sparse", 0)
    >>> trainer = SparseTrainer(overrides=args, sparse=SparseOptions("group_sl", reg=5e-4, schedule="linear"))
    >>> trainer.train(); trainer.best
"""

from __future__ import annotations

import csv
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from ultralytics.utils import DEFAULT_CFG, RANK
from ultralytics.utils.torch_utils import unwrap_model

from rtdetr_prune import rules
from rtdetr_prune.adapter import RTDETRAdapter
from rtdetr_prune.engine import PruneOptions
from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.files import atomic_path, write_csv
from rtdetr_prune.graph import TRACE_IMGSZ, trace
from rtdetr_prune.methods import METHODS, Method, get_method
from rtdetr_prune.probe import analyse
from rtdetr_prune.trainer import PrunedTrainer

LOG = logging.getLogger("rtdetr_prune")
SCHEDULES = ("constant", "linear", "step")


@dataclass(frozen=True)
class SparseOptions:
    """What to sparse-train with. Every default says why."""

    method: str  # a method that needs sparse training (slim, group_slim, group_sl, group_reg)
    reg: float = 1e-4  # penalty strength at the first epoch; Torch-Pruning's examples use 1e-5..5e-4
    delta_reg: float = 1e-5  # group_reg only: per-epoch growth of the penalty of its weakest channels
    schedule: str = "constant"  # how `reg` changes over the epochs, see reg_at()
    threshold: float = 1e-2  # a BatchNorm scale |gamma| below this counts as sparse (in the log only)
    round_to: int = PruneOptions.round_to  # the channel unit pruning will use: groups narrower are left alone

    def __post_init__(self):
        method = get_method(self.method)
        if not method.needs_sparse_training:
            sparse = ", ".join(m.name for m in METHODS.values() if m.needs_sparse_training)
            raise UserError(f"Method '{self.method}' prunes without sparse training; "
                            f"sparse-train for one of: {sparse}.")
        if self.schedule not in SCHEDULES:
            raise UserError(f"Unknown reg schedule '{self.schedule}'.{suggest(self.schedule, SCHEDULES)} "
                            f"Choose one of: {', '.join(SCHEDULES)}.")
        if self.reg < 0 or self.delta_reg < 0 or self.threshold <= 0:
            raise UserError("reg and delta_reg must be >= 0 and the sparsity threshold > 0.")


def reg_at(schedule: str, reg: float, epoch: int, epochs: int) -> float:
    """Penalty strength during ``epoch`` (0-based) of ``epochs``.

    constant: ``reg`` throughout. linear: from ``reg`` at the first epoch down to 0 at the last.
    step: ``reg``, halved from 50% of the epochs on and halved again from 75% on.

    Example:
        >>> [reg_at("step", 1.0, e, 4) for e in range(4)]
        [1.0, 1.0, 0.5, 0.25]
    """
    if schedule == "constant":
        return reg
    if schedule == "linear":
        return reg * (1 - epoch / (epochs - 1)) if epochs > 1 else reg
    if schedule == "step":
        return reg * (0.5 if epoch >= 0.5 * epochs else 1.0) * (0.5 if epoch >= 0.75 * epochs else 1.0)
    raise ValueError(f"unknown schedule {schedule!r}")


class Sparsifier:
    """Sparse training as Ultralytics callbacks: the penalty, its schedule, the sparsity log and plot.

    :class:`SparseTrainer` registers its methods as callbacks. Ultralytics' DDP launcher pickles the
    callbacks for its workers (and nothing else we could add), so this object is how the options
    reach them.
    """

    def __init__(self, options: SparseOptions):
        self.options = options
        self.method: Method = get_method(options.method)
        self.pruner = None  # the Torch-Pruning pruner, built on the training model by attach()
        self.region: nn.Module | None = None  # what the pruner traced; its parameters are the model's
        self.bn_names: list[str] = []  # BatchNorms the penalty acts on, by name in the detection model
        self.scale = 1.0  # this epoch's reg / options.reg
        self.rows: dict[int, dict] = {}  # epoch -> sparsity.csv row
        self._hook = None

    def callbacks(self) -> dict:
        """Ultralytics event name -> callback."""
        return {"on_train_start": self.on_train_start, "on_train_epoch_start": self.on_train_epoch_start,
                "on_train_epoch_end": self.on_train_epoch_end, "on_train_end": self.on_train_end,
                "teardown": self.detach}

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Build the pruner on ``model`` (an unwrapped detection model) and penalize every step of ``optimizer``."""
        self.pruner, self.region, ignored = build_pruner(model, self.method, self.options)
        skip = {id(m) for m in ignored}
        self.bn_names = [n for n, m in model.named_modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and id(m) not in skip]
        self._hook = optimizer.register_step_pre_hook(self.before_step)

    def before_step(self, optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: add this epoch's penalty to the (unscaled, clipped) gradients."""
        add_penalty(self.pruner, self.region, self.scale)

    def detach(self, trainer=None) -> None:
        """Stop penalizing (``teardown`` callback; runs even when training fails)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_train_start(self, trainer) -> None:
        """Attach to the model as training receives it (on its device, optimizer built); a resumed run
        keeps the sparsity.csv rows of the epochs it does not redo."""
        self.attach(unwrap_model(trainer.model), trainer.optimizer)
        csv_path = trainer.save_dir / "sparsity.csv"
        if trainer.start_epoch > 0 and csv_path.is_file():
            with open(csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["epoch"]) <= trainer.start_epoch]
            self.rows = {int(r["epoch"]) - 1: {"epoch": int(r["epoch"]), "reg": float(r["reg"]),
                                               "sparsity": float(r["sparsity"])} for r in kept}

    def on_train_epoch_start(self, trainer) -> None:
        """Set this epoch's penalty strength from the schedule."""
        self.scale = reg_at(self.options.schedule, 1.0, trainer.epoch, trainer.epochs)

    def on_train_epoch_end(self, trainer) -> None:
        """Grow group_reg's penalty; log the sparsity of the EMA, the model that is validated and saved."""
        if hasattr(self.pruner, "update_reg"):  # growing regularization: raise the weakest channels' penalty
            self.pruner.update_reg()
        if RANK in {-1, 0}:
            self.log(trainer.epoch, _ema_or_model(trainer), trainer.save_dir / "sparsity.csv")

    def on_train_end(self, trainer) -> None:
        """Plot the BatchNorm scales of the kept checkpoint (best.pt)."""
        if trainer.best.is_file():
            from ultralytics.nn.tasks import load_checkpoint

            model = load_checkpoint(trainer.best)[0]
        else:
            model = _ema_or_model(trainer)
        plot_scales(bn_scales(model, self.bn_names), self.options.threshold, trainer.save_dir / "sparsity.png")

    def log(self, epoch: int, model: nn.Module, csv_path: Path) -> dict:
        """Record the sparsity of ``model`` after ``epoch`` (0-based) into ``csv_path``; return the row."""
        share = sparsity(bn_scales(model, self.bn_names), self.options.threshold)
        row = {"epoch": epoch + 1, "reg": self.options.reg * self.scale, "sparsity": round(share, 6)}
        self.rows[epoch] = row  # keyed by epoch: an epoch redone after NaN recovery replaces its row
        write_csv(csv_path, [self.rows[e] for e in sorted(self.rows)])
        LOG.info("sparsity: %.1f%% of BatchNorm scales below %g (reg %.3g)", 100 * share,
                 self.options.threshold, row["reg"])
        return row


class SparseTrainer(PrunedTrainer):
    """:class:`PrunedTrainer` that adds a pruning method's sparsity penalty (see :class:`Sparsifier`).

    Args:
        sparse: the options. Omitted in DDP workers, which find them in the callbacks they are given.
        Others: as for :class:`PrunedTrainer`.

    Attributes:
        sparsifier: the :class:`Sparsifier` (its ``pruner`` exists once training has started).
        best: Ultralytics' ``weights/best.pt``, the epoch with the best mAP50-95.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None,
                 sparse: SparseOptions | None = None, validate_first: bool = False):
        super().__init__(cfg, overrides, _callbacks, validate_first)
        found = _registered(self.callbacks)
        if found is None and sparse is None:
            raise TypeError("SparseTrainer needs sparse=SparseOptions(...)")
        if found is not None and sparse not in (None, found.options):
            raise ValueError("the given callbacks already carry other sparse-training options")
        self.sparsifier = found or Sparsifier(sparse)
        if found is None:
            for event, callback in self.sparsifier.callbacks().items():
                self.add_callback(event, callback)


def _registered(callbacks: dict) -> Sparsifier | None:
    for callback in callbacks.get("on_train_start", []):
        if isinstance(getattr(callback, "__self__", None), Sparsifier):
            return callback.__self__
    return None


def _ema_or_model(trainer) -> nn.Module:
    """The model Ultralytics validates and saves: the EMA when there is one."""
    return trainer.ema.ema if trainer.ema else unwrap_model(trainer.model)


def build_pruner(model: nn.Module, method: Method, options: SparseOptions, imgsz: int = TRACE_IMGSZ):
    """The method's Torch-Pruning pruner over ``model``'s traced region, used only to regularize.

    Returns:
        (pruner, region, ignored): the region is the module to pass to ``pruner.regularize``;
        ignored are the layers the penalty leaves alone (see :func:`untouchable_layers`).
    """
    ignored = untouchable_layers(model, options.round_to)
    region = RTDETRAdapter(model).region()
    kwargs = {"reg": options.reg, **dict(method.pruner_kwargs)}
    if "delta_reg" in inspect.signature(method.pruner).parameters:
        kwargs["delta_reg"] = options.delta_reg
    example = torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device)
    was_training = model.training
    try:
        pruner = method.pruner(region, example_inputs=example, importance=method.importance(), ignored_layers=ignored,
                               pruning_ratio=0.0, customized_pruners=rules.customized_pruners(), **kwargs)
    finally:
        model.train(was_training)  # Torch-Pruning traces in eval mode and leaves the model there
    return pruner, region, ignored


def untouchable_layers(model: nn.Module, round_to: int = PruneOptions.round_to) -> list[nn.Module]:
    """Layers the penalty must leave alone: the protected ones, and every layer whose output channels
    belong to a group the pruning engine skips (shrinking channels that are never removed only costs accuracy).

    Groups are judged at the ``round_to`` pruning will use (a group narrower than one unit is never pruned).

    Raises:
        UserError: the model has layers Torch-Pruning cannot trace (the penalty needs the whole graph).
    """
    plan = analyse(model, unit=round_to)
    if plan.opaque_types:
        names = ", ".join(t.__name__ for t in plan.opaque_types)
        raise UserError(f"Sparse training needs a fully traceable model, but Torch-Pruning cannot trace {names}. "
                        "Choose a method without sparse training (l1, lamp, group_norm, group_taylor...).")
    graph = trace(model)
    prunable = set(plan.prunable)
    skipped = [m for g in graph.all_groups() if graph.key(g) not in prunable for m in graph.out_modules(g)]
    return [*graph.adapter.protected(), *(m for m in skipped if isinstance(m, nn.Module))]


def add_penalty(pruner, model: nn.Module, scale: float) -> None:
    """``grad += scale * penalty gradient`` for every parameter of ``model`` that has a gradient.

    The pruner's ``regularize`` runs on zeroed gradients, so its penalty can be scaled by the
    schedule whatever the pruner (their ``reg`` arguments and attributes differ).
    """
    if scale == 0:
        return
    params = [p for p in model.parameters() if p.grad is not None]
    loss_grads = [p.grad for p in params]
    for p in params:
        p.grad = torch.zeros_like(p.grad)
    pruner.regularize(model)
    for p, g in zip(params, loss_grads):
        p.grad = g.add_(p.grad, alpha=scale)


def bn_scales(model: nn.Module, names: list[str]) -> torch.Tensor:
    """|gamma| of the named BatchNorms of ``model``, all channels in one 1-D float32 CPU tensor."""
    modules = dict(model.named_modules())
    scales = [modules[n].weight.detach().abs().float().flatten().cpu() for n in names]
    return torch.cat(scales) if scales else torch.zeros(0)


def sparsity(scales: torch.Tensor, threshold: float) -> float:
    """Share (0..1) of ``scales`` below ``threshold``; 0 when there are none."""
    return float((scales < threshold).float().mean()) if scales.numel() else 0.0


def plot_scales(scales: torch.Tensor, threshold: float, path: Path) -> Path:
    """Histogram of log10 |gamma| with the threshold marked, as a PNG (Agg canvas: no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.hist(torch.log10(scales.clamp(min=1e-6)).numpy(), bins=60, color="tab:blue")
    ax.axvline(float(torch.log10(torch.tensor(threshold))), color="tab:red", ls="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("log10 |BatchNorm scale| (clamped at 1e-6)")
    ax.set_ylabel("channels")
    ax.set_title(f"{sparsity(scales, threshold):.1%} of {scales.numel()} scales below {threshold:g}")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
