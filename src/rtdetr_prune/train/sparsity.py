"""Sparse training, whatever trains the model: the penalty, its schedule, the sparsity log and plot.

The method's Torch-Pruning pruner supplies the penalty: its ``regularize`` adds the penalty's
gradient to ``.grad``; :func:`add_penalty` scales it by the schedule (:func:`reg_at`). Only the
layers pruning may shrink are penalized (:func:`untouchable_layers`). A family's trainer calls these
(for Ultralytics: :mod:`rtdetr_prune.models.ultralytics.sparse_trainer`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import atomic_path
from rtdetr_prune.models import adapter_of
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis import analyse
from rtdetr_prune.pruning.graph import TRACE_IMGSZ, trace
from rtdetr_prune.pruning.methods import METHODS, Method, get_method
from rtdetr_prune.recipe import default, validate

SPARSE_THRESHOLD = 1e-2  # a BatchNorm scale |gamma| below this counts as sparse (in the log and plot only)
GROWTH_FILE = "group_reg.pt"  # group_reg's grown penalties after each epoch, in the training run's folder


@dataclass(frozen=True)
class SparseOptions:
    """What to sparse-train with. Defaults, meanings and checks are the recipe's (:mod:`rtdetr_prune.recipe`)."""

    method: str  # a method that needs sparse training (slim, group_slim, group_sl, group_reg)
    reg: float = default("reg")  # penalty strength at the first epoch
    delta_reg: float = default("delta_reg")  # group_reg only: per-epoch growth of the weakest channels' penalty
    reg_schedule: str = default("reg_schedule")  # how `reg` changes over the epochs, see reg_at()
    round_to: int = default("round_to")  # the channel unit pruning will use: groups narrower are left alone

    def __post_init__(self):
        validate(self)
        if not get_method(self.method).needs_sparse_training:
            sparse = ", ".join(m.name for m in METHODS.values() if m.needs_sparse_training)
            raise UserError(f"Method '{self.method}' prunes without sparse training; "
                            f"sparse-train for one of: {sparse}.")

    @classmethod
    def from_recipe(cls, recipe) -> "SparseOptions":
        """Sparse-training options from a :class:`~rtdetr_prune.recipe.Recipe` (same names)."""
        return cls(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(cls)})


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


def build_pruner(model: nn.Module, method: Method, options: SparseOptions, imgsz: int = TRACE_IMGSZ):
    """The method's Torch-Pruning pruner over ``model``'s traced region, used only to regularize.

    Returns:
        (pruner, region, ignored): the region is the module to pass to ``pruner.regularize``;
        ignored are the layers the penalty leaves alone (see :func:`untouchable_layers`).
    """
    ignored = untouchable_layers(model, options.round_to)
    region = adapter_of(model).region()
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


def untouchable_layers(model: nn.Module, round_to: int = default("round_to")) -> list[nn.Module]:
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
    return [*graph.adapter.protected_modules(), *(m for m in skipped if isinstance(m, nn.Module))]


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


def save_growth(pruner, region: nn.Module, path: Path, epoch: int) -> None:
    """Record growing regularization's per-channel penalties after ``epoch`` (1-based) epochs into ``path``
    (``{epoch: {group root name: penalties (channels,)}}``, earlier epochs kept), atomically."""
    names = {m: n for n, m in region.named_modules()}
    log = _read_growth(path)
    log[epoch] = {names[g[0].dep.target.module]: r.detach().float().cpu() for g, r in pruner.group_reg.items()}
    with atomic_path(path) as tmp:
        torch.save({e: log[e] for e in sorted(log) if e <= epoch}, tmp)


def restore_growth(pruner, region: nn.Module, path: Path, epoch: int) -> None:
    """Set the pruner's grown penalties to those recorded after ``epoch`` epochs (a resumed run); without a
    record (a run from before they were kept), they restart from ``reg``, with a warning."""
    state = _read_growth(path).get(epoch)
    if state is None:
        logging.getLogger("rtdetr_prune").warning("'%s' has no group_reg penalties after epoch %d: their growth "
                                                  "restarts from reg", path, epoch)
        return
    names = {m: n for n, m in region.named_modules()}
    for group, reg in pruner.group_reg.items():
        saved = state.get(names[group[0].dep.target.module])
        if saved is not None and saved.shape == reg.shape:
            pruner.group_reg[group] = saved.to(reg.device, reg.dtype)


def _read_growth(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    return torch.load(path, map_location="cpu", weights_only=True) if Path(path).is_file() else {}


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
