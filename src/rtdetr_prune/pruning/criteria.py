"""Importance criteria and regularizing pruners, corrected where Torch-Pruning 1.6.1 gets them wrong.

Each class subclasses the matching Torch-Pruning (TP) class and says in its docstring which
TP bug it fixes. Everything else (constructor arguments, group reduction, normalizers) is TP's.

    HessianImportance   TP never accumulates squared gradients; only the last sample counts.
    TaylorImportance    TP silently drops BatchNorm terms (it tests for GroupNorm instead).
    GrowingRegPruner    TP's BatchNorm penalty is added to a temporary copy and lost.
    BNScalePruner       TP's group lasso crashes on groups without BatchNorm, or with a slice of one.
    GroupNormPruner     TP ignores its own `alpha` and turns flat or single-channel groups into NaN.

Both importances also score depthwise convolutions, which TP's importances skip.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function as tpf

# Handlers whose channels are rows of dim 0 (outputs) or dim 1 (inputs) of a weight.
# TP gives a depthwise conv its own handler (one for both sides); its channels are dim-0 rows.
_OUT = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels, tpf.prune_depthwise_conv_out_channels)
_IN = (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels)
_NORM = (tpf.prune_batchnorm_out_channels, tpf.prune_layernorm_out_channels)
_TARGETS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


def _dim1_rows(t: torch.Tensor, groups: int) -> torch.Tensor:
    """One row per channel of dim 1 of a grouped weight, e.g. the inputs of a grouped conv.

    Channel j of group k sits at dim-1 position j within the dim-0 slice of group k, so its row
    gathers only that group's filters (TP instead repeats the whole-weight sums once per group).
    """
    t = t.reshape(groups, t.shape[0] // groups, t.shape[1], -1)
    return t.transpose(1, 2).reshape(groups * t.shape[2], -1)


def _rows(t: torch.Tensor, layer: nn.Module, handler) -> torch.Tensor:
    """View a parameter (or a tensor shaped like one) as one row per channel the handler prunes."""
    if t.dim() > 1 and handler not in _NORM:
        # Transposed convs store (in, out/groups, ...), so the two sides swap axes.
        if (handler in _IN) != bool(getattr(layer, "transposed", False)):
            return _dim1_rows(t, getattr(layer, "groups", 1))
    return t.reshape(t.shape[0], -1)


def _scored_params(layer: nn.Module, handler, bias: bool) -> list:
    """The parameters whose channels a handler removes: weight, plus bias when asked (not for inputs)."""
    if handler in _IN:
        params = [layer.weight]
    elif handler in _OUT or handler in _NORM:
        params = [layer.weight, layer.bias if bias else None]  # norms without affine have weight None
    else:
        params = []
    return [p for p in params if p is not None]


def _channel_terms(group, target_types, bias: bool, paired, term):
    """Per-channel score terms of every scored parameter in a group, ready for TP's `_reduce`.

    Args:
        group: a TP group with full channel indices (as `DG.get_all_groups` yields them).
        target_types: layer classes to score; others are skipped.
        bias: whether biases are scored too.
        paired: maps a parameter to the tensor scored with it (gradient, curvature), or None to
            skip that parameter.
        term: maps (weights, paired values), both one row per channel, to one score per channel.

    Returns:
        The list of score tensors and the list of their root indices.
    """
    scores, roots = [], []
    for item in group:
        layer, handler = item.dep.layer, item.dep.handler
        if not isinstance(layer, tuple(target_types)):
            continue
        for param in _scored_params(layer, handler, bias):
            other = paired(param)
            if other is None:
                continue
            # Index with idxs as given: TP sorts them in place, which unpairs them from root_idxs.
            w = _rows(param.detach(), layer, handler)[item.idxs]
            scores.append(term(w, _rows(other, layer, handler)[item.idxs]))
            roots.append(item.root_idxs)
    return scores, roots


class TaylorImportance(tp.importance.GroupTaylorImportance):
    """First-order Taylor importance |w * dL/dw| per channel, summed over a group's layers.

    Fixes TP 1.6.1, whose BatchNorm branch tests for `prune_groupnorm_out_channels`, so BatchNorm
    scales never count. Parameters without a gradient are skipped (TP raises on them); a group
    with nothing to score gives None, which TP's pruners skip.

    Example:
        >>> imp = TaylorImportance()
        >>> loss.backward()
        >>> scores = imp(group)  # one score per channel of the group's root layer
    """

    def __init__(self, group_reduction="mean", normalizer="mean", multivariable=False, bias=False,
                 target_types=_TARGETS):
        super().__init__(group_reduction=group_reduction, normalizer=normalizer, multivariable=multivariable,
                         bias=bias, target_types=list(target_types))

    def _term(self, w: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        prod = w * dw
        return prod.sum(1).abs() if self.multivariable else prod.abs().sum(1)

    @torch.no_grad()
    def __call__(self, group):
        scores, roots = _channel_terms(group, self.target_types, self.bias, lambda p: p.grad, self._term)
        if not scores:
            return None
        return self._normalize(self._reduce(scores, roots), self.normalizer)


class HessianImportance(tp.importance.GroupHessianImportance):
    """Optimal Brain Damage importance w**2 * h per channel, h the empirical Fisher diagonal.

    `accumulate_grad(model)` adds every parameter's squared gradient and counts the calls; h is
    their mean (per-sample gradients give the empirical Fisher; per-batch ones, a coarser estimate
    of it). Fixes TP 1.6.1, whose `accumulate_grad` stores by parameter but tests membership
    by name, so each call overwrites the last (h is the last sample's squared gradient), and whose
    BatchNorm bias test is inverted. Unlike TP this never writes into `p.grad`, and it keeps the
    statistics until `zero_grad()`, so every group of a pruning step sees the same estimate.
    Pruning replaces the pruned parameters, so call `zero_grad()` and accumulate again per step.

    Example:
        >>> imp = HessianImportance()
        >>> for loss in per_sample_losses:
        ...     model.zero_grad()
        ...     loss.backward(retain_graph=True)
        ...     imp.accumulate_grad(model)
        >>> scores = imp(group)
    """

    def __init__(self, group_reduction="mean", normalizer="mean", bias=False, target_types=_TARGETS):
        super().__init__(group_reduction=group_reduction, normalizer=normalizer, bias=bias,
                         target_types=list(target_types))
        self.zero_grad()

    def zero_grad(self):
        """Forget all accumulated squared gradients."""
        self._sq_grad_sum, self._n_grads = {}, {}

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module):
        """Add the squared gradient of every parameter of `model` that has one."""
        for p in model.parameters():
            if p.grad is None:
                continue
            if p in self._sq_grad_sum:
                self._sq_grad_sum[p] += p.grad.detach() ** 2
                self._n_grads[p] += 1
            else:
                self._sq_grad_sum[p] = p.grad.detach() ** 2
                self._n_grads[p] = 1

    def _mean_sq_grad(self, p: nn.Parameter):
        return self._sq_grad_sum[p] / self._n_grads[p] if p in self._sq_grad_sum else None

    @torch.no_grad()
    def __call__(self, group):
        if not self._sq_grad_sum:
            raise RuntimeError("HessianImportance has no gradients: after each per-sample backward(), "
                               "call accumulate_grad(model) before scoring groups.")
        scores, roots = _channel_terms(group, self.target_types, self.bias, self._mean_sq_grad,
                                       lambda w, h: (w ** 2 * h).sum(1))
        if not scores:
            return None
        return self._normalize(self._reduce(scores, roots), self.normalizer)


@torch.no_grad()
def _add_decay(param: nn.Parameter, idxs, scale: torch.Tensor):
    """grad[idxs] += scale * param[idxs] in place (TP's `grad.data[idxs].add_` edits a copy)."""
    idx = torch.as_tensor(idxs, dtype=torch.long, device=param.device)
    param.grad.index_add_(0, idx, scale.to(param.grad) * param.detach()[idx])


def _bn_items(pruner, group):
    """(layer, group item) for the affine, not ignored BatchNorms of a group that have a gradient."""
    for item in group:
        layer = item.dep.layer
        if (isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine
                and layer.weight.grad is not None and layer not in pruner.ignored_layers):
            yield layer, item


def _take(values: torch.Tensor, idxs) -> torch.Tensor:
    return values[torch.as_tensor(idxs, dtype=torch.long, device=values.device)]


@functools.cache
def _regularizes_bn(pruner_cls) -> bool:
    """Whether `pruner_cls.regularize` changes BatchNorm weight gradients, tried on a tiny model."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    pruner = pruner_cls(model, torch.zeros(1, 1, 2, 2), tp.importance.MagnitudeImportance(), reg=1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    return bool(model[1].weight.grad.abs().sum() > 0)


class GrowingRegPruner(tp.pruner.GrowingRegPruner):
    """Growing-regularization pruner (Wang et al. 2021) that also regularizes BatchNorm.

    Fixes TP 1.6.1, whose `regularize` adds the BatchNorm term with `grad.data[idxs].add_(...)`,
    i.e. into a copy, so BatchNorm gradients never change. Conv and linear terms are the parent's;
    this adds grad[idx] += gamma * w[idx] for each BatchNorm in each group, unless a tiny probe
    shows the parent's `regularize` already does (a fixed TP), so the term is never counted twice.
    Unlike the parent, the BatchNorm term is also added in groups whose importance is None or NaN.
    """

    def regularize(self, model: nn.Module, bias: bool = False):
        """Add the growing penalty gamma * w to the gradients of all grouped weights."""
        super().regularize(model, bias=bias)
        mro = type(self).__mro__
        if not _regularizes_bn(mro[mro.index(GrowingRegPruner) + 1]):  # the class super() called
            self._regularize_bn(bias)

    def _regularize_bn(self, bias: bool):
        for group in self._groups:
            for layer, item in _bn_items(self, group):
                gamma = _take(self.group_reg[group], item.root_idxs)
                _add_decay(layer.weight, item.idxs, gamma)
                if bias and layer.bias is not None and layer.bias.grad is not None:
                    _add_decay(layer.bias, item.idxs, gamma)


# Squared BatchNorm scales per channel, averaged over the group's BatchNorms, as TP's group lasso uses.
_BN_SQUARED = tp.importance.MagnitudeImportance(p=2, group_reduction="mean", normalizer=None,
                                                 target_types=[nn.modules.batchnorm._BatchNorm])


class BNScalePruner(tp.pruner.BNScalePruner):
    """Network-slimming pruner whose group lasso works on every group.

    The L1 penalty (`group_lasso=False`) is TP's, which is correct. TP 1.6.1's group lasso adds
    `1e-9` to the importance before testing it for None, so any group without a BatchNorm (a conv
    or linear layer feeding no BatchNorm) raises TypeError, and adds the penalty to the whole
    BatchNorm, so a BatchNorm shared by several groups (after a concat) raises on shape mismatch.
    Ours skips groups without BatchNorm and adds
    grad[idx] += reg * w[idx] / sqrt(mean of w**2 over the group's BatchNorms + 1e-9)
    to exactly the group's channels. The parent's group lasso is not called, so nothing doubles.
    """

    def regularize(self, model: nn.Module, reg: float | None = None, bias: bool = False):
        """Add the L1 (or group-lasso) penalty gradient to the BatchNorm scales."""
        if not self.group_lasso:
            return super().regularize(model, reg=reg, bias=bias)
        reg = self.reg if reg is None else reg
        for group in self._groups:
            squared = _BN_SQUARED(group)
            if squared is None or torch.isnan(squared).any():  # no BatchNorm, or diverged weights
                continue
            gamma = reg / (squared + 1e-9).sqrt()
            for layer, item in _bn_items(self, group):
                _add_decay(layer.weight, item.idxs, _take(gamma, item.root_idxs))


class GroupNormPruner(tp.pruner.GroupNormPruner):
    """DepGraph group-norm pruner (Fang et al. 2023) that uses its `alpha` and never makes NaNs.

    TP 1.6.1 scales the penalty per channel by alpha**((max - imp) / (max - min)) but
    `regularize(model, alpha=2**4)` ignores the constructor's `alpha` (documented as the exponent,
    a range of [2**0, 2**alpha]); ours defaults to 2**self.alpha. When every channel of a group is
    equally important (a one-channel group, or constant weights) TP divides 0 by 0 and writes NaN
    into the gradients, and a group whose importance is None raises AttributeError. Ours hands the
    parent a NaN importance for such groups, which the parent skips, leaving their gradients alone.
    """

    _in_regularize = False

    def regularize(self, model: nn.Module, alpha: float | None = None, bias: bool = False):
        """Add the group-norm penalty gradient; `alpha` defaults to 2**(the constructor's alpha)."""
        alpha = 2 ** self.alpha if alpha is None else alpha
        self._in_regularize = True
        try:
            super().regularize(model, alpha=alpha, bias=bias)
        finally:
            self._in_regularize = False

    def estimate_importance(self, group):
        """TP's estimate; while regularizing, NaN for groups that have no spread in importance."""
        imp = super().estimate_importance(group)
        if self._in_regularize and (imp is None or imp.max() == imp.min()):
            return torch.full((len(group[0].idxs),), float("nan"))
        return imp
