"""Prune to a *measured* speed-up: base time / pruned time, timed side by side on the user's device and runtime.

Timing is slow and noisy, so it is used sparingly: the GFLOPs engine (:func:`prune_to_target`, exact and cheap)
does the pruning, and timing only tells it which GFLOPs target gives the asked time. Latency falls with GFLOPs
along a line that does not go through zero (fixed costs: data movement, small ops, the decoder's query part):

    latency ratio = c + (1 - c) * GFLOPs ratio        (ratios pruned / base; c: the share of time that stays)

1. Prune to the asked speed-up in GFLOPs (as if c were 0) and time it against the base (:class:`LatencyMeter`).
2. Fit c from that measurement (the line through it and the base), aim the GFLOPs target where the line meets
   the asked latency ratio, prune again from the base, and time it.
3. From then on, aim through two measurements: the nearest on each side of the target once the target is
   bracketed (regula falsi: latency is not linear in GFLOPs at deep cuts, and a secant through two points on one
   side overshoots), else the two nearest (a secant), until one lands within ``tolerance`` of the target
   (either side: timing noise is of that size) or ``evaluations`` are spent. A measurement that shows no gain
   at all (no faster than the base, or than a shallower candidate) gives no line: the next aim goes half again
   deeper than the deepest candidate, as long as the target is not reached.

A candidate that lands in the window is timed once more, afresh (new export, new warm-up), before it is
accepted: on a noisy machine (eager PyTorch on a shared CPU moved one model's measured speed-up from 2.83x to
2.32x between two timings) a lucky first timing would otherwise end the search. Its measurement is then the
geometric mean of the two; if that leaves the window, the search goes on from it.

The candidate whose measured speed-up is nearest the target (on a log scale) is returned. Each candidate is
pruned from the base with the same method and seed, so a target reached in GFLOPs always gives the same model.

Example:
    >>> meter = LatencyMeter(model, batch=8, imgsz=640, backend="onnxruntime")
    >>> out = prune_to_latency(model, get_method("lamp"), PruneOptions(speed_up=2.0, imgsz=640), meter)
    >>> out.measured, out.result.speed_up  # e.g. 2.02 measured, at 2.31x fewer GFLOPs
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from torch import nn

from rtdetr_prune.pruning.analysis.prunable import Plan
from rtdetr_prune.pruning.engine import Batches, PruneOptions, PruneResult, prune_to_target
from rtdetr_prune.pruning.methods import Method

EVALUATIONS = 6  # timed candidates at most: the first aims blind, the second fits c, the rest refine
MIN_GFLOPS_SPEED_UP = 1.001  # the engine needs a target above 1


@dataclass
class LatencyResult:
    """The chosen candidate and every one timed on the way."""

    result: PruneResult  # the pruned model at the chosen GFLOPs target (its speed_up is in GFLOPs)
    measured: float  # its measured speed-up: base time / its time
    evaluations: list[dict] = field(default_factory=list)  # per candidate: gflops_target, gflops_speed_up, measured
    message: str = ""


def prune_to_latency(model: nn.Module, method: Method, options: PruneOptions, meter, batches: Batches | None = None,
                     plan: Plan | None = None, evaluations: int = EVALUATIONS, costs=None,
                     confirm: bool = True, sensitivity=None) -> LatencyResult:
    """Prune a copy of ``model`` until its measured speed-up reaches ``options.speed_up`` (see the module docstring).

    Args:
        model: the detection model (not modified); ``meter`` must time against it.
        method, options, batches, plan: as for :func:`prune_to_target`; ``options.speed_up`` is the measured target,
            ``options.tolerance`` the window around it.
        meter: a :class:`~rtdetr_prune.bench.meter.LatencyMeter` whose reference is ``model``.
        evaluations: most candidates to time.
        costs: the per-layer time table for ``options.latency_aware`` (as for :func:`prune_to_target`).
        confirm: time a candidate that lands in the window once more before accepting it.
        sensitivity: as for :func:`prune_to_target` (its profile is measured once and reused for every candidate).
    """
    target, tol = options.speed_up, max(options.tolerance, 0.01)
    tried: list[tuple[float, float, PruneResult]] = []  # (GFLOPs ratio, latency ratio, result)
    evals: list[dict] = []
    aim = target
    for _ in range(evaluations):
        result = prune_to_target(model, method, dataclasses.replace(options, speed_up=aim), batches, plan, costs=costs,
                                 sensitivity=sensitivity)
        timings = [meter.speed_up(result.model)]
        if confirm and _within(timings[0].speed_up, target, tol):
            timings.append(meter.speed_up(result.model))  # a fresh timing before accepting it
        measured = math.prod(t.speed_up for t in timings) ** (1 / len(timings))
        tried.append((1 / result.speed_up, 1 / measured, result))
        evals.append({"gflops_target": round(aim, 4), "gflops_speed_up": round(result.speed_up, 4),
                      "measured_speed_up": round(measured, 4),
                      "timings": [{"speed_up": round(t.speed_up, 4), "spread": round(t.spread, 4), "rounds": t.rounds}
                                  for t in timings]})
        if _within(measured, target, tol):
            break
        nxt = _next_aim(tried, target)
        if nxt is None or abs(nxt / aim - 1) < 1e-3 or (measured < target and result.speed_up < aim * 0.999):
            break  # the line says nothing new, or the engine could not reach the last aim (the model's limit)
        aim = nxt
    best = min(tried, key=lambda t: abs(math.log(t[1] * target)))
    measured = 1 / best[1]
    message = (f"measured speed-up {measured:.3f}x (target {target:g}x, {meter.backend} on {meter.device}) at "
               f"{best[2].speed_up:.3f}x fewer GFLOPs, after {len(tried)} timed candidates")
    if not _within(measured, target, tol):
        message += f"; outside the {tol:.0%} window: timing noise, or the model's limit ({best[2].message})"
    return LatencyResult(best[2], measured, evals, message)


def _within(measured: float, target: float, tol: float) -> bool:
    return abs(measured / target - 1) <= tol


def _next_aim(tried: list[tuple[float, float, PruneResult]], target: float) -> float | None:
    """The GFLOPs speed-up whose latency ratio the line through the measurements (and the base) puts at
    ``1 / target``; None if the measurements give no usable line."""
    want = 1 / target
    points = sorted([(1.0, 1.0)] + [(f, r) for f, r, _ in tried], key=lambda p: abs(p[1] - want))
    faster, slower = [p for p in points if p[1] < want], [p for p in points if p[1] >= want]
    pair = None
    if faster and slower and len(tried) > 1:  # bracketed by measurements (the base alone brackets nothing useful)
        pair = faster[0], _other_gflops(faster[0], slower)
    if pair is None or pair[1] is None:  # the same model timed twice brackets nothing either
        pair = points[0], _other_gflops(points[0], points[1:])
    if pair[1] is None:
        return None
    (f1, r1), (f2, r2) = pair
    if (r2 - r1) / (f2 - f1) <= 1e-9:  # pruning did not make it faster: timing noise or fixed costs, no usable line
        deepest = min(f for f, _, _ in tried)
        fastest = min(r for _, r, _ in tried)  # the lowest latency ratio measured
        return 1.5 / deepest if fastest > want else None  # still short of the target: go half again deeper
    f = f1 + (want - r1) * (f2 - f1) / (r2 - r1)  # GFLOPs ratio where the line reaches the wanted latency ratio
    if f >= 1:
        return None
    if f <= 0:  # the line never gets there: go half again past the deepest candidate (the engine stops at its limit)
        return 1.5 / min(f for f, _, _ in tried)
    return max(MIN_GFLOPS_SPEED_UP, 1 / f)


def _other_gflops(p: tuple[float, float], points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The first of ``points`` (GFLOPs ratio, latency ratio) at another GFLOPs ratio than ``p``'s, or None."""
    return next((q for q in points if abs(q[0] - p[0]) > 1e-6), None)
