"""The ten pruning methods, as data.

A method is a frozen record: how to score channels (an importance criterion), which Torch-Pruning
pruner carries its sparse-training regularizer, whether it needs sparse training first, and whether
its scores need gradients from the user's data. The pruning steps themselves are the same for
every method (see :mod:`rtdetr_prune.pruning.engine`); methods differ in what they rank by.

Example:
    >>> m = get_method("lamp")
    >>> m.needs_sparse_training, m.needs_gradients
    (False, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch_pruning as tp

from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.pruning import criteria


@dataclass(frozen=True)
class Method:
    """One pruning method.

    Attributes:
        name: registry key, as typed on the command line.
        importance: factory returning a fresh Torch-Pruning importance object (scores one group:
            a 1-D tensor, one score per channel of the group's root layer; low = prune first).
        pruner: Torch-Pruning pruner class whose ``regularize(model)`` is the sparse-training
            penalty (used by sparse training only; pruning steps are ours).
        needs_sparse_training: prune only after a sparsity-inducing training phase.
        needs_gradients: the criterion reads ``.grad`` accumulated over batches of the user's data.
        pruner_kwargs: extra keyword arguments for ``pruner`` (e.g. ``group_lasso``).
        summary: one line for ``--help`` and docs.
    """

    name: str
    importance: Callable[[], object]
    pruner: type
    needs_sparse_training: bool
    needs_gradients: bool
    summary: str
    pruner_kwargs: tuple[tuple[str, object], ...] = ()


def _l1():
    # Filter L1 norm of the group's first (root) layer only: Li et al., "Pruning Filters for Efficient ConvNets".
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer="mean")


_METHODS = (
    Method("l1", _l1, tp.pruner.BasePruner, False, False, "L1 norm of the root layer's filters"),
    Method("random", tp.importance.RandomImportance, tp.pruner.BasePruner, False, False,
           "random channels (a baseline for the others)"),
    Method("slim", lambda: tp.importance.BNScaleImportance(group_reduction="first"), criteria.BNScalePruner,
           True, False, "BatchNorm scale of the root layer after L1 sparse training (Network Slimming)"),
    Method("group_slim", tp.importance.BNScaleImportance, criteria.BNScalePruner, True, False,
           "BatchNorm scales of the whole group after group-lasso sparse training",
           pruner_kwargs=(("group_lasso", True),)),
    Method("group_norm", lambda: tp.importance.GroupMagnitudeImportance(p=2), criteria.GroupNormPruner,
           False, False, "L2 norm over every coupled layer of the group (DepGraph)"),
    Method("lamp", lambda: tp.importance.LAMPImportance(p=2), tp.pruner.BasePruner, False, False,
           "layer-adaptive magnitude score (LAMP)"),
    Method("group_sl", lambda: tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
           criteria.GroupNormPruner, True, False, "group L2 norm after group sparse learning (DepGraph)"),
    Method("group_reg", lambda: tp.importance.GroupMagnitudeImportance(p=2), criteria.GrowingRegPruner,
           True, False, "group L2 norm after growing-regularization training"),
    Method("group_hessian", criteria.HessianImportance, tp.pruner.BasePruner, False, True,
           "optimal-brain-damage saliency w^2 * E[g^2] over data batches"),
    Method("group_taylor", criteria.TaylorImportance, tp.pruner.BasePruner, False, True,
           "first-order Taylor saliency |w * g| over data batches, BatchNorm included"),
)

METHODS: dict[str, Method] = {m.name: m for m in _METHODS}


def get_method(name: str) -> Method:
    """Look a method up by name; an unknown name raises with the nearest valid one."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(
            f"Unknown pruning method '{name}'.{suggest(name, METHODS)} Choose one of: {', '.join(METHODS)}."
        ) from None
