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


def group_units(key, scores, width, orig_width, unit, max_ratio, block: int = 1, heads: int = 1) -> list[Unit]:
    """Split one group's removable channels into units of ``unit``, least important first.

    The first unit also takes ``width % unit`` channels so the width lands on a multiple of ``unit``;
    no unit takes the group below ``max(unit, (1 - max_ratio) * orig_width)`` (rounded up to ``unit``).
    A group whose channels go in aligned blocks (``block`` > 1, e.g. attention heads) is split by
    :func:`block_units` instead; one viewed as equal heads that must stay equal (``heads`` > 1, e.g.
    deformable attention's values) by :func:`head_units`.
    """
    scores = torch.nan_to_num(scores.detach().float().cpu(), nan=float("inf"))
    if block > 1:
        return block_units(key, scores, width, orig_width, unit, max_ratio, block)
    if heads > 1:
        return head_units(key, scores, width, orig_width, unit, max_ratio, heads)
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


def block_units(key, scores, width, orig_width, unit, max_ratio, block) -> list[Unit]:
    """Units of whole aligned blocks (channels [i * block, (i + 1) * block)), least important blocks first.

    Each unit holds ``ceil(unit / block)`` blocks; a block scores the mean of its channels; at least
    ``(1 - max_ratio)`` of the original blocks stay (and at least one unit's worth).
    """
    assert width % block == 0, f"group {key}: width {width} is not a multiple of its block {block}"
    per = math.ceil(unit / block)  # blocks per unit
    blocks = scores.view(width // block, block).mean(1)
    min_keep = max(per, per * math.ceil((1.0 - max_ratio) * (orig_width // block) / per))
    order = torch.argsort(blocks, stable=True).tolist()
    units, left = [], width // block
    while left - per >= min_keep:
        chosen = order[len(order) - left:len(order) - left + per]
        idxs = tuple(i for b in sorted(chosen) for i in range(b * block, (b + 1) * block))
        units.append(Unit(key, idxs, float(blocks[chosen].mean())))
        left -= per
    return units


def head_units(key, scores, width, orig_width, unit, max_ratio, heads) -> list[Unit]:
    """Units that take the same number of channels from each of ``heads`` equal heads (channels
    [h * w, (h + 1) * w), w = width / heads), each head's least important first.

    A unit takes ``ceil(unit / heads)`` channels per head (the first also each head's ``w % that``, so head
    widths land on a multiple of it); every head keeps at least ``(1 - max_ratio)`` of its original width (and
    one unit's worth). Unit i takes the i-th slice of every head's own ranking.
    """
    assert width % heads == 0, f"group {key}: width {width} is not split evenly over {heads} heads"
    w, per = width // heads, math.ceil(unit / heads)
    min_keep = max(per, per * math.ceil((1.0 - max_ratio) * (orig_width // heads) / per))
    order = torch.argsort(scores.view(heads, w), dim=1, stable=True).tolist()  # per head, least important first
    units, start, left = [], 0, w
    size = w % per or per
    while left - size >= min_keep:
        idxs = tuple(sorted(h * w + c for h in range(heads) for c in order[h][start:start + size]))
        units.append(Unit(key, idxs, float(scores[list(idxs)].mean())))
        start, left, size = start + size, left - size, per
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


def choose_global(candidates: list[list[Unit]], ratio: float, cost=None) -> list[Unit]:
    """The globally least important units, ``ratio`` of all removable channels at least one unit.

    With ``cost`` (unit -> what removing it saves, e.g. milliseconds), the units losing the least importance per
    unit of cost saved go first (HALP's ranking); units that save nothing go last.
    """
    rank = (lambda u: u.score) if cost is None else (lambda u: u.score / max(cost(u), 1e-9))
    pool = sorted((u for units in candidates for u in units), key=rank)
    budget = ratio * sum(len(u.idxs) for u in pool)
    chosen, removed = [], 0
    for u in pool:
        if chosen and removed >= budget:
            break
        chosen.append(u)
        removed += len(u.idxs)
    return chosen
