"""Per-layer widths chosen by measured sensitivity: how much each group can lose, tried one group at a time.

Uniform shares (every group loses the same fraction) cut sensitive layers as deep as robust ones, and a global
ranking of channel scores compares numbers that mean different things in different layers. This measures
instead: for each prunable group alone, remove a third, two thirds and all of its removable units (its least
important channels first, by the method's own criterion), and record how much a damage score rises (the
detection loss on a few training images, after BatchNorm recalibration; :func:`loss_damage`). Then units are
taken greedily, across groups, by the damage they add per GFLOP they save (linear between the measured depths),
until the planner predicts the target. NVIDIA ModelOpt's FastNAS chooses widths from the same kind of
one-layer-at-a-time profile (scored by mAP after BatchNorm calibration); docs/benchmarks.md, 3e, compares them.

Cost: ``3 x groups`` damage evaluations on the unpruned model, once per run (each one prunes a copy, recalibrates
BatchNorm and runs the loss over the images). With a record file, each group's curve is written as soon as it is
measured, and a run stopped midway measures only the groups it had not reached (on CPU, rtdetr-r18 at 640 px
takes hours).
"""

from __future__ import annotations

import copy
import heapq
import json
import logging
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from rtdetr_prune.io.files import write_json
from rtdetr_prune.models import adapter_of, family_of
from rtdetr_prune.progress import progress
from rtdetr_prune.pruning.recalibrate import recalibrate_batchnorm
from rtdetr_prune.pruning.units import Unit

DEPTHS = (1 / 3, 2 / 3, 1.0)  # shares of a group's removable units tried
Curve = list[tuple[int, float]]  # (units removed, damage added), starting at (0, 0), non-decreasing
LOG = logging.getLogger(__name__)


def loss_damage(batches: list[dict], device: str | torch.device = "cpu") -> Callable[[nn.Module], float]:
    """A damage score: the mean detection loss of a model over ``batches`` (Ultralytics training batches, ``img``
    (B, 3, H, W) in [0, 1] with targets), after re-estimating its BatchNorm statistics on the same images, on
    ``device``. Lower is better. The model (a copy the caller owns) moves to ``device`` and its BatchNorm
    statistics change; nothing else does."""
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

    @torch.no_grad()
    def damage(model: nn.Module) -> float:
        model.to(device)
        images = sum(len(b["img"]) for b in batches)
        recalibrate_batchnorm(model, adapter_of(model).region(), [b["img"] for b in batches], images, device)
        model.eval()
        family = family_of(model)
        return sum(float(family.loss(model, b).sum()) for b in batches) / len(batches)

    return damage


class Sensitivity:
    """Chooses a pruning's units by measured sensitivity (see the module docstring); what the engine takes as
    ``sensitivity``. A profile is measured once per model it is asked about (the same removable units: ``--target
    latency`` prunes the same model to several GFLOPs targets and reuses it) and again for each new model (with
    ``--sensitivity-steps`` K > 1, the partly pruned model of each of the first K steps): make one per run.

    Args:
        damage: model -> a score that rises as the model gets worse (e.g. :func:`loss_damage`); it may change the
            model's BatchNorm statistics (it gets a copy).
        record: a JSON file the first profile's curves are written to as they are measured (see
            :func:`measure_curves`); later profiles go next to it as ``<stem>-2.json``, ``<stem>-3.json``...
    """

    def __init__(self, damage: Callable[[nn.Module], float], record: str | Path | None = None):
        self.damage = damage
        self.record = Path(record) if record is not None else None
        self.profiles: dict[str, dict[str, Curve]] = {}  # the removable units (as JSON) -> their groups' curves

    def choose(self, model: nn.Module, candidates: list[list[Unit]],
               apply: Callable[[nn.Module, list[Unit]], nn.Module], planner, goal: float) -> list[Unit]:
        """The units to remove from ``model`` (traced into ``candidates``, each group's removable units least
        important first) so that ``planner`` (a :class:`~rtdetr_prune.pruning.planner.FlopPlanner` of ``model``)
        predicts at most ``goal`` GFLOPs, in the order they were taken (cheapest damage per GFLOP first)."""
        key = json.dumps([[u.key, list(u.idxs)] for units in candidates for u in units])
        if key not in self.profiles:
            n, record = len(self.profiles), self.record
            if record is not None and n:
                record = record.with_name(f"{record.stem}-{n + 1}{record.suffix}")
            self.profiles[key] = measure_curves(model, candidates, apply, self.damage, record)
        return allocate(candidates, self.profiles[key], planner.unit_cost, planner.predict, goal)


def measure_curves(model: nn.Module, candidates: Iterable[list[Unit]],
                   apply: Callable[[nn.Module, list[Unit]], nn.Module],
                   damage: Callable[[nn.Module], float], record: Path | None = None) -> dict[str, Curve]:
    """Each group's damage curve: ``damage`` of ``model`` with only that group's first units removed, at
    :data:`DEPTHS` of its removable units, minus the unpruned model's damage; made non-decreasing (removing more
    never counts as helping). ``apply(model, units)`` returns a pruned copy.

    ``record``: a JSON file holding the unpruned damage, every group's units (channel indices, in order) and the
    curves measured so far, rewritten (atomically) after each group. Curves found there are reused when the
    record describes the same profile (the same groups and units, and an unpruned damage equal to 1e-4); any
    other record is measured afresh and replaced."""
    groups = [units for units in candidates if units]
    base = damage(copy.deepcopy(model))
    units_of = {units[0].key: [list(u.idxs) for u in units] for units in groups}
    curves = _resumed(record, base, units_of)
    for units in progress(groups, desc="sensitivity (one group at a time)", leave=False):
        if units[0].key in curves:
            continue
        depths = sorted({max(1, round(d * len(units))) for d in DEPTHS})
        curve, worst = [(0, 0.0)], 0.0
        for k in depths:
            worst = max(worst, damage(apply(model, units[:k])) - base)
            curve.append((k, worst))
        curves[units[0].key] = curve
        if record is not None:
            write_json(record, {"base_damage": base, "units": units_of, "curves": curves})
    return curves


def _resumed(record: Path | None, base: float, units_of: dict[str, list[list[int]]]) -> dict[str, Curve]:
    """The curves a record of this same profile holds (none if there is no such record)."""
    if record is None or not record.is_file():
        return {}
    try:
        saved = json.loads(record.read_text())
        same = saved["units"] == units_of and abs(saved["base_damage"] - base) <= 1e-4 * max(1.0, abs(base))
        curves = {k: [(int(n), float(d)) for n, d in c] for k, c in saved["curves"].items()} if same else {}
    except (ValueError, KeyError, TypeError):  # unreadable or another layout: measure afresh
        curves = {}
    if curves:
        LOG.info("sensitivity: %d of %d groups' curves reused from %s", len(curves), len(units_of), record)
    return curves


def allocate(candidates: Iterable[list[Unit]], curves: dict[str, Curve], saves: Callable[[Unit], float],
             predict: Callable[[list[Unit]], float], goal: float) -> list[Unit]:
    """Units across groups, cheapest damage per GFLOP saved first (each group's in its own order), until
    ``predict(chosen)`` (GFLOPs after removing them) is at most ``goal``; all of them if it never is.

    Args:
        candidates: each group's removable units, least important first.
        curves: :func:`measure_curves`' result (groups without a curve are not taken).
        saves: GFLOPs removing a unit alone saves (:meth:`~rtdetr_prune.pruning.planner.FlopPlanner.unit_cost`).
        predict: GFLOPs of the model without a list of units.
        goal: the target GFLOPs.
    """
    queues = {units[0].key: units for units in candidates if units and units[0].key in curves}
    heap: list[tuple[float, int, str, int]] = []  # (damage per GFLOP, tie-break, group, index of its next unit)
    order = 0

    def push(key: str, i: int) -> None:
        nonlocal order
        if i < len(queues[key]):
            added = _at(curves[key], i + 1) - _at(curves[key], i)
            heapq.heappush(heap, (added / max(saves(queues[key][i]), 1e-12), order, key, i))
            order += 1

    for key in queues:
        push(key, 0)
    chosen: list[Unit] = []
    while heap:
        _, _, key, i = heapq.heappop(heap)
        chosen.append(queues[key][i])
        if len(chosen) % 4 == 0 and predict(chosen) <= goal:  # the exact prediction costs; check every few units
            break
        push(key, i + 1)
    while len(chosen) > 1 and predict(chosen[:-1]) <= goal:  # the check above may have gone a few units past
        chosen.pop()
    return chosen


def _at(curve: Curve, k: float) -> float:
    """Damage after removing ``k`` units, linear between the measured depths."""
    for (k0, d0), (k1, d1) in zip(curve, curve[1:]):
        if k <= k1:
            return d0 + (d1 - d0) * (k - k0) / (k1 - k0)
    return curve[-1][1]
