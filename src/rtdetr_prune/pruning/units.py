"""Turn channel scores into removable *units* and pick a step's worth of them.

A unit is ``round_to`` channels of one group (its least important ones first); groups never go below
their floor (``max_layer_ratio`` of the original width removed at most, and one unit kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Unit:
    """``idxs``: root-channel indices in the current model; ``score``: their mean importance."""

    key: str  # group
    idxs: tuple[int, ...]  # root-channel indices in the current model
    score: float  # mean importance of its channels (criteria normalize per group)


def group_units(key, scores, width, orig_width, unit, max_ratio) -> list[Unit]:
    """Split one group's removable channels into units of ``unit``, least important first.

    The first unit also takes ``width % unit`` channels so the width lands on a multiple of ``unit``;
    no unit takes the group below ``max(unit, (1 - max_ratio) * orig_width)`` (rounded up to ``unit``).
    """
    scores = torch.nan_to_num(scores.detach().float().cpu(), nan=float("inf"))
    min_keep = max(unit, unit * math.ceil((1.0 - max_ratio) * orig_width / unit))
    order = torch.argsort(scores, stable=True).tolist()
    units, start, left = [], 0, width
    first = width % unit or unit
    size = first
    while left - size >= min_keep:
        idxs = order[start:start + size]
        units.append(Unit(key, tuple(idxs), float(scores[idxs].mean())))
        start, left, size = start + size, left - size, unit
    return units


def choose_local(candidates, orig: dict[str, int], ratio: float, level: int) -> tuple[list[Unit], int]:
    """Each group shrinks toward ``orig * (1 - ratio) ** level`` channels (nearest unit).

    Small groups only lose a unit once that target has moved a half unit below their width, so
    every group ends up at about the same share of its original width. If nothing would move at
    ``level``, the level is raised until something does. Returns the units and the level used.
    """
    for lvl in range(level, level + 200):
        chosen = []
        for width, units in candidates:
            target = orig[units[0].key] * (1 - ratio) ** lvl
            for u in units:
                if width - len(u.idxs) / 2 < target:
                    break
                chosen.append(u)
                width -= len(u.idxs)
        if chosen:
            return chosen, lvl
    return [], level


def choose_global(candidates: list[list[Unit]], ratio: float) -> list[Unit]:
    """The globally least important units, ``ratio`` of all removable channels at least one unit."""
    pool = sorted((u for units in candidates for u in units), key=lambda u: u.score)
    budget = ratio * sum(len(u.idxs) for u in pool)
    chosen, removed = [], 0
    for u in pool:
        if chosen and removed >= budget:
            break
        chosen.append(u)
        removed += len(u.idxs)
    return chosen
