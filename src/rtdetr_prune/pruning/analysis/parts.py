"""Which optional parts of a model get pruned: the recipe's ``--decoder-parts``.

:func:`~rtdetr_prune.pruning.analysis.prunable.analyse` finds every group that can be pruned, the decoder's
included, and records which optional part each decoder group belongs to (``Plan.parts``, from the family's
:meth:`~rtdetr_prune.models.Adapter.group_part`). :func:`restrict` then keeps the parts the user turned on
and lists the others as skipped, so ``check`` shows what each would add, and one analysis serves any choice.

Example:
    >>> plan = restrict(analyse(model, 16), "memory,value")
    >>> [s.layer for s in plan.skipped if s.kind == "option"]  # the FFN and MLP groups
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.models import adapter_of, family_of
from rtdetr_prune.pruning.analysis.prunable import Plan, Skip
from rtdetr_prune.recipe import AUTO, decoder_parts, validate

OPTION_KIND = "option"  # the Skip kind of a group whose part is turned off


def restrict(plan: Plan, parts: str) -> Plan:
    """``plan`` with only the groups of the parts named in ``parts`` (a --decoder-parts value) left prunable,
    besides the groups that belong to no optional part; the others become skips of kind "option"."""
    validate(SimpleNamespace(decoder_parts=parts))
    wanted = set(decoder_parts(parts))
    off = [k for k in plan.prunable if plan.parts.get(k, None) not in (None, *wanted)]
    skips = [Skip(k, f"decoder part '{plan.parts[k]}' is off (--decoder-parts {parts or 'none'})", OPTION_KIND)
             for k in off]
    return dataclasses.replace(plan, prunable=[k for k in plan.prunable if k not in set(off)],
                               skipped=[*plan.skipped, *skips])


def resolve_parts(model: nn.Module, parts: str, distill_features: bool = False) -> str:
    """A --decoder-parts value with "auto" replaced by every part ``model``'s family can prune ("none" if it prunes
    none), less ``memory`` when ``distill_features`` (feature distillation compares the decoder's inputs, whose
    width memory prunes); any other value is returned as given."""
    if parts.strip() != AUTO:
        return parts
    names = [p for p in family_of(model).decoder_parts if not (distill_features and p == "memory")]
    return ",".join(names) or "none"


def require_support(model: nn.Module, parts: str, layers: int) -> None:
    """Raise :class:`UserError` if ``model``'s family cannot do what ``--decoder-parts parts`` and
    ``--decoder-layers layers`` ask, rather than leave its decoder whole without a word."""
    family = family_of(model)
    missing = [p for p in decoder_parts(parts) if p not in family.decoder_parts]
    if missing:
        raise UserError(f"--decoder-parts {parts}: {family.name} models do not prune decoder part(s) "
                        f"{', '.join(missing)} (their decoder is kept whole); "
                        f"use --decoder-parts {','.join(family.decoder_parts) or 'none'}")
    if layers and not adapter_of(model).decoder_layers():
        raise UserError(f"--decoder-layers {layers}: {family.name} models cannot drop decoder layers; "
                        "leave it at 0 (all layers)")


def part_keys(plan: Plan, part: str) -> list[str]:
    """Groups of ``plan`` (prunable or turned off) that belong to ``part``."""
    return [k for k, p in plan.parts.items() if p == part]
