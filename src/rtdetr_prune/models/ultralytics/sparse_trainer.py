"""Sparse training for the methods that prune after it: slim, group_slim, group_sl, group_reg.

The method's Torch-Pruning pruner supplies the penalty: its ``regularize`` adds the penalty's
gradient to ``.grad``. It is added once per optimizer step, to the loss gradient after Ultralytics
has unscaled and clipped it, right before the step runs: a step pre-hook on the optimizer (PyTorch's
documented hook). Ultralytics' ``optimizer_step`` (unscale, clip, step) stays untouched, gradients
are unscaled once, the penalty is never clipped away, and a step the AMP scaler skips adds nothing.

The penalty's strength follows a schedule over the epochs (:func:`reg_at`). After each epoch the
share of near-zero BatchNorm scales is logged to ``sparsity.csv`` with the epoch's val mAP50-95 (and, with a
:class:`~rtdetr_prune.models.ultralytics.prunability.PruneProbe`, the mAP50-95 of the epoch's model pruned to the
target, which picks ``weights/prunable.pt``); at the end ``sparsity.png`` shows their distribution in the
checkpoint :func:`picked` names: Ultralytics' ``best.pt`` (fitness mAP50-95: weights 0, 0, 0, 1 for P, R,
mAP50, mAP50-95 in Ultralytics 8.4, ties going to the later epoch), ``last.pt`` or ``prunable.pt``.

Example:
    >>> args = train_args("pruned.pt", "data.yaml", 30, 640, 16, "0", 8, "runs", "sparse", 0)
    >>> trainer = SparseTrainer(overrides=args, sparse=SparseOptions("group_sl", reg=5e-4, reg_schedule="linear"))
    >>> trainer.train(); trainer.best
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from torch import nn
from ultralytics.utils import DEFAULT_CFG, RANK
from ultralytics.utils.torch_utils import unwrap_model

from rtdetr_prune.io.files import write_csv
from rtdetr_prune.models.ultralytics.distiller import Distiller
from rtdetr_prune.models.ultralytics.prunability import PROBE_FILE, PruneProbe
from rtdetr_prune.models.ultralytics.trainer import PrunedTrainer, resumable, train_args
from rtdetr_prune.pruning.methods import Method, get_method
from rtdetr_prune.train.sparsity import (
    GROWTH_FILE,
    SPARSE_THRESHOLD,
    SparseOptions,
    add_penalty,
    bn_scales,
    build_pruner,
    plot_scales,
    reg_at,
    restore_growth,
    save_growth,
    sparsity,
)

LOG = logging.getLogger("rtdetr_prune")


class Sparsifier:
    """Sparse training as Ultralytics callbacks: the penalty, its schedule, the sparsity log and plot.

    :class:`SparseTrainer` registers its methods as callbacks. Ultralytics' DDP launcher pickles the
    callbacks for its workers (and nothing else we could add), so this object is how the options
    reach them.
    """

    def __init__(self, options: SparseOptions, probe: PruneProbe | None = None):
        self.options = options
        self.probe = probe  # scores each epoch's prunability (sparsity.csv column pruned_map50_95)
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
                "on_train_epoch_end": self.on_train_epoch_end, "on_model_save": self.on_model_save,
                "on_train_end": self.on_train_end, "teardown": self.detach}

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
        if trainer.start_epoch > 0 and hasattr(self.pruner, "update_reg"):  # group_reg: the grown penalties too
            restore_growth(self.pruner, self.region, trainer.save_dir / GROWTH_FILE, trainer.start_epoch)
        csv_path = trainer.save_dir / "sparsity.csv"
        if trainer.start_epoch > 0 and csv_path.is_file():
            with open(csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["epoch"]) <= trainer.start_epoch]
            self.rows = {int(r["epoch"]) - 1: {k: _number(r.get(k)) for k in self._columns()} for r in kept}
            if self.probe is not None:  # the best prunability so far, so prunable.pt is replaced only by a better epoch
                self.probe.best = max([-1.0, *(r["pruned_map50_95"] for r in self.rows.values()
                                               if r["pruned_map50_95"] is not None)])

    def on_train_epoch_start(self, trainer) -> None:
        """Set this epoch's penalty strength from the schedule."""
        self.scale = reg_at(self.options.reg_schedule, 1.0, trainer.epoch, trainer.epochs)

    def on_train_epoch_end(self, trainer) -> None:
        """Grow group_reg's penalty; log the sparsity of the EMA, the model that is validated and saved."""
        if hasattr(self.pruner, "update_reg"):  # growing regularization: raise the weakest channels' penalty
            self.pruner.update_reg()
            if RANK in {-1, 0}:  # kept per epoch, so that a resumed run continues the growth
                save_growth(self.pruner, self.region, trainer.save_dir / GROWTH_FILE, trainer.epoch + 1)
        if RANK in {-1, 0}:
            self.log(trainer.epoch, _ema_or_model(trainer), trainer.save_dir / "sparsity.csv")

    def on_model_save(self, trainer) -> None:
        """After the epoch's checkpoints are saved (rank 0): record its val mAP50-95 and, with a probe, its
        prunability (which may keep it as prunable.pt)."""
        row = self.rows.get(trainer.epoch)
        if row is None:
            return
        row["map50_95"] = round(float((trainer.metrics or {}).get("metrics/mAP50-95(B)", float("nan"))), 6)
        if self.probe is not None:
            row["pruned_map50_95"] = round(self.probe(trainer, _ema_or_model(trainer)), 6)
            LOG.info("prunability: mAP50-95 %.4f pruned to %gx (best %.4f)", row["pruned_map50_95"],
                     self.probe.options.speed_up, self.probe.best)
        write_csv(trainer.save_dir / "sparsity.csv", [self.rows[e] for e in sorted(self.rows)])

    def on_train_end(self, trainer) -> None:
        """Plot the BatchNorm scales of the kept checkpoint (best.pt, or prunable.pt when probing)."""
        kept = trainer.wdir / PROBE_FILE if self.probe is not None else trainer.best
        if kept.is_file():
            from ultralytics.nn.tasks import load_checkpoint

            model = load_checkpoint(kept)[0]
        else:
            model = _ema_or_model(trainer)
        plot_scales(bn_scales(model, self.bn_names), SPARSE_THRESHOLD, trainer.save_dir / "sparsity.png")

    def log(self, epoch: int, model: nn.Module, csv_path: Path) -> dict:
        """Record the sparsity of ``model`` after ``epoch`` (0-based) into ``csv_path``; return the row."""
        share = sparsity(bn_scales(model, self.bn_names), SPARSE_THRESHOLD)
        row = {**dict.fromkeys(self._columns()), "epoch": epoch + 1, "reg": self.options.reg * self.scale,
               "sparsity": round(share, 6)}  # map50_95 (and pruned_map50_95) come after validation
        self.rows[epoch] = row  # keyed by epoch: an epoch redone after NaN recovery replaces its row
        write_csv(csv_path, [self.rows[e] for e in sorted(self.rows)])
        LOG.info("sparsity: %.1f%% of BatchNorm scales below %g (reg %.3g)", 100 * share,
                 SPARSE_THRESHOLD, row["reg"])
        return row

    def _columns(self) -> tuple[str, ...]:
        """sparsity.csv's columns."""
        return ("epoch", "reg", "sparsity", "map50_95") + (("pruned_map50_95",) if self.probe is not None else ())


def _number(text: str | None) -> int | float | None:
    """A sparsity.csv cell as a number (None when empty or missing: a column a run before it did not write)."""
    if text in (None, ""):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


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
                 sparse: SparseOptions | None = None, validate_first: bool = False, distill: Distiller | None = None,
                 probe: PruneProbe | None = None):
        super().__init__(cfg, overrides, _callbacks, validate_first)  # the distiller after the sparsifier, below
        found = _registered(self.callbacks)
        if found is None and sparse is None:
            raise TypeError("SparseTrainer needs sparse=SparseOptions(...)")
        if found is not None and sparse not in (None, found.options):
            raise ValueError("the given callbacks already carry other sparse-training options")
        self.sparsifier = found or Sparsifier(sparse, probe)
        if found is None:
            for event, callback in self.sparsifier.callbacks().items():
                self.add_callback(event, callback)
        if distill is not None and self.distiller is None:  # the sparsifier analyses (copies) the model at train
            self.distiller = distill  # start; the distiller's hooks, attached after, would record tensors it copies
            for event, callback in distill.callbacks().items():
                self.add_callback(event, callback)


def _registered(callbacks: dict) -> Sparsifier | None:
    for callback in callbacks.get("on_train_start", []):
        if isinstance(getattr(callback, "__self__", None), Sparsifier):
            return callback.__self__
    return None


def _ema_or_model(trainer) -> nn.Module:
    """The model Ultralytics validates and saves: the EMA when there is one."""
    return trainer.ema.ema if trainer.ema else unwrap_model(trainer.model)


def sparse_train(model_pt, data, method: str, epochs: int, reg: float, delta_reg: float, reg_schedule: str,
                 imgsz: int, batch: int, device: str, workers: int, project, name: str, seed: int,
                 round_to: int | None = None, resume: bool = False, distill: Distiller | None = None,
                 pick: str = "best", probe: PruneProbe | None = None, **overrides) -> Path:
    """Sparse-train a checkpoint for a method that needs it (slim, group_slim, group_sl, group_reg).

    Args:
        method: the pruning method whose regularizer to train with.
        reg: penalty strength at the first epoch; ``reg_schedule`` ("constant", "linear", "step")
            scales it over the epochs (see :func:`rtdetr_prune.train.sparsity.reg_at`).
        delta_reg: growth of group_reg's penalty per epoch (other methods ignore it).
        round_to: the channel unit pruning will use (default: the engine's); groups narrower than
            one unit are never pruned, so they are not penalized.
        distill: distil from a teacher while sparse training (see :mod:`rtdetr_prune.models.ultralytics.distiller`).
        resume: continue the interrupted run in ``project/name`` at the epoch after its last saved one
            (the schedule, sparsity.csv and group_reg's per-channel penalty growth continue).
        pick: which epoch to return (see :func:`picked`); "prunable" needs ``probe``.
        probe: score every epoch's prunability (:class:`~rtdetr_prune.models.ultralytics.prunability.PruneProbe`).
        Others: as for :func:`finetune`.

    Returns:
        The picked checkpoint; the run directory also holds sparsity.csv and sparsity.png.
    """
    if pick == "prunable" and probe is None:
        raise ValueError("pick='prunable' scores epochs with a probe: pass probe=PruneProbe(...)")
    unit = {} if round_to is None else {"round_to": round_to}
    options = SparseOptions(method=method, reg=reg, delta_reg=delta_reg, reg_schedule=reg_schedule, **unit)
    args = train_args(model_pt, data, epochs, imgsz, batch, device, workers, project, name, seed, **overrides)
    if resume:
        args["resume"] = str(resumable(Path(args["project"]) / name / "weights" / "last.pt", epochs))
    trainer = SparseTrainer(overrides=args, sparse=options, distill=distill, probe=probe)
    trainer.train()
    return picked(trainer.save_dir, pick)


def picked(train_dir: Path, pick: str) -> Path:
    """The checkpoint of a finished sparse-training run that ``pick`` names: "best" (Ultralytics' best.pt, the best
    val mAP50-95), "last" (the last epoch, the sparsest) or "prunable" (the best mAP50-95 once pruned to the target,
    kept by the probe). A missing best.pt or prunable.pt (no epoch validated) falls back to last.pt."""
    weights = Path(train_dir) / "weights"
    name = {"best": "best.pt", "last": "last.pt", "prunable": PROBE_FILE}[pick]
    return weights / name if (weights / name).is_file() else weights / "last.pt"
