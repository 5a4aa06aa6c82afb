"""Prune a model step by step until a target speed-up (in GFLOPs) is reached.

Each step: trace the current model, score every prunable group with the method's criterion,
turn scores into *units* (``round_to`` channels of one group, least important first), pick this
step's units (a share of each group, or the globally least important; or, with a measured
:mod:`~rtdetr_prune.pruning.sensitivity` profile, the whole way at once by damage per GFLOP), and apply them to a copy.
If the copy overshoots the target by more than ``tolerance``, the step is shrunk: a bisection over
how many of its units (taken least important first) to apply. The caller's model is never changed.

Example:
    >>> result = prune_to_target(load_model("rtdetr-tiny", nc=3), get_method("lamp"),
    ...                          PruneOptions(speed_up=1.5, imgsz=160))
    >>> result.speed_up >= 1.5
    True
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from rtdetr_prune.measure import counts as metrics
from rtdetr_prune.models import family_of
from rtdetr_prune.progress import progress
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis.parts import require_support, resolve_parts, restrict
from rtdetr_prune.pruning.analysis.prunable import Plan, Skip, analyse
from rtdetr_prune.pruning.graph import TracedGraph, trace
from rtdetr_prune.pruning.latency_aware import LayerCosts
from rtdetr_prune.pruning.methods import Method
from rtdetr_prune.pruning.planner import FlopPlanner
from rtdetr_prune.pruning.sensitivity import Sensitivity
from rtdetr_prune.pruning.units import Unit, choose_global, choose_local, group_units
from rtdetr_prune.recipe import default, validate


@dataclass(frozen=True)
class PruneOptions:
    """How far and how to prune. Defaults, meanings and checks are the recipe's (:mod:`rtdetr_prune.recipe`)."""

    speed_up: float = default("speed_up")  # target: base GFLOPs / pruned GFLOPs
    max_steps: int = default("max_steps")
    step_ratio: float = default("step_ratio")  # share of each group's channels (global: of all channels) per step
    global_pruning: bool = default("global_pruning")
    round_to: int = default("round_to")  # channels are removed in units of this many
    max_layer_ratio: float = default("max_layer_ratio")
    imgsz: int = default("imgsz")  # GFLOPs are counted at this square image size, pixels
    tolerance: float = default("tolerance")  # stop at most this share past the target
    grad_batches: int = default("grad_batches")  # batches of data for gradient-based criteria, each step
    seed: int = default("seed")  # step k scores with the random state seed + k: `random` repeats after --resume
    decoder_parts: str = default("decoder_parts")  # decoder widths pruned besides the encoder ("none": encoder only)
    decoder_layers: int = default("decoder_layers")  # keep only the first K decoder layers first (0: all)
    latency_aware: bool = default("latency_aware")  # rank units by importance per measured ms saved (needs `costs`)
    sensitivity_steps: int = default("sensitivity_steps")  # profiled steps to the target (with `sensitivity`)

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_recipe(cls, recipe) -> "PruneOptions":
        """The engine's options from a :class:`~rtdetr_prune.recipe.Recipe` (same names)."""
        return cls(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(cls)})


@dataclass
class PruneResult:
    """A pruned model and how it got there."""

    model: nn.Module
    speed_up: float  # base GFLOPs / final GFLOPs
    steps: int
    history: list[dict]  # one row per step: step, params, gflops, speed_up (row 0 = baseline)
    skipped: list[Skip]
    message: str  # why the loop stopped, in words
    widths: dict[str, int] = field(default_factory=dict)  # group key -> channels left
    original_widths: dict[str, int] = field(default_factory=dict)  # group key -> channels before (the limits' base)


Batches = Callable[[], Iterable[dict]]


def prune_to_target(
    model: nn.Module,
    method: Method,
    options: PruneOptions,
    batches: Batches | None = None,
    plan: Plan | None = None,
    on_step: Callable[[dict], None] | None = None,
    original_widths: dict[str, int] | None = None,
    costs: LayerCosts | None = None,
    sensitivity: Sensitivity | None = None,
) -> PruneResult:
    """Prune a copy of ``model`` until ``options.speed_up`` is reached (or no step can help).

    Args:
        model: RT-DETR detection model (not modified).
        method: the criterion to rank channels by.
        options: target and step settings.
        batches: returns an iterable of Ultralytics training batches (dicts with ``img`` (B, 3, H, W)
            in [0, 1], ``batch_idx``, ``cls``, ``bboxes``); required when the method needs gradients.
        plan: a precomputed :func:`~rtdetr_prune.pruning.analysis.prunable.analyse` result (computed when omitted).
        on_step: called with each history row as it is made, baseline first (to log or save progress).
        original_widths: group key -> width of the model pruning started from, when ``model`` is already
            pruned (a later round of an iterative schedule): ``max_layer_ratio`` and ``step_ratio`` then count
            from those widths, not from ``model``'s. Default: ``model``'s own widths.
        costs: the per-layer time table ``options.latency_aware`` ranks by (measured on ``model``'s device and
            runtime, :meth:`~rtdetr_prune.pruning.latency_aware.LayerCosts.measure`).
        sensitivity: choose the first ``options.sensitivity_steps`` (K) steps' units by measured sensitivity
            (:class:`~rtdetr_prune.pruning.sensitivity.Sensitivity`), instead of a share of each group: step k
            goes to base GFLOPs / speed_up^(k/K), the last of them the whole way to the target; later steps, if
            any are needed to land in the window, are the usual ones.
    """
    if method.needs_gradients and batches is None:
        raise ValueError(f"method '{method.name}' scores channels with gradients: pass `batches` of data")
    if options.latency_aware and costs is None:
        raise ValueError("latency_aware ranking needs `costs`: a LayerCosts table measured on the device")
    parts = resolve_parts(model, options.decoder_parts)
    require_support(model, parts, options.decoder_layers)
    unit = max(1, options.round_to)
    model = copy.deepcopy(model).eval().requires_grad_(True)  # finished Ultralytics checkpoints come frozen
    rules.apply_rewrites(model)  # users' output-preserving rewrites (no-op if none registered)
    plan = restrict(plan or analyse(model, unit), parts)
    params, base = metrics.params_and_gflops(model, options.imgsz)
    history = [_row(0, params, base, base)]
    if on_step:
        on_step(history[0])
    flops = _keep_decoder_layers(model, options, base, history, on_step)
    orig = _widths(trace(model, plan.opaque_types), plan.prunable)
    orig = {k: max(w, (original_widths or {}).get(k, w)) for k, w in orig.items()}
    speed, message, steps, level = base / flops, "", 0, 0
    bar = progress(range(1, options.max_steps + 1), desc=f"prune {method.name} -> {options.speed_up:g}x")
    for step in bar:
        if speed >= options.speed_up:
            message = f"reached {speed:.3f}x (target {options.speed_up:g}x) by dropping decoder layers alone"
            break
        graph = trace(model, plan.opaque_types)
        with torch.random.fork_rng(devices=[]):  # the caller's random state is neither read nor advanced
            torch.manual_seed(options.seed + step)
            units, pool, level = _step_units(graph, plan.prunable, method, options, orig, unit, batches, model,
                                             level + 1, costs if options.latency_aware else None)
        if sensitivity is not None and step <= options.sensitivity_steps:  # by measured damage per GFLOP
            goal = base / options.speed_up ** (step / options.sensitivity_steps)  # the whole way in K steps
            units = sensitivity.choose(model, _by_group(pool), lambda m, us: _apply(m, plan, us),
                                       FlopPlanner(graph, model, options.imgsz, flops), goal)
        if not units:
            message = (f"stopped at {speed:.3f}x: every prunable group is at its limit "
                       f"(max_layer_ratio={options.max_layer_ratio}, round_to={unit})")
            break
        model, params, flops = _take_step(model, plan, graph, units, pool, base, flops, options)
        speed, steps = base / flops, step
        history.append(_row(step, params, flops, base))
        if on_step:
            on_step(history[-1])
        bar.set_postfix(speed_up=f"{speed:.3f}x")
        if speed >= options.speed_up:
            message = f"reached {speed:.3f}x (target {options.speed_up:g}x) in {step} steps"
            if speed > options.speed_up * (1 + options.tolerance):
                message += (f", past the {options.tolerance:.0%} window: no smaller set of {unit}-channel units "
                            "lands inside it for this model (a smaller --round-to gives finer steps)")
            break
    else:
        message = f"stopped at max_steps={options.max_steps} at {speed:.3f}x, short of the {options.speed_up:g}x target"
    widths = _widths(trace(model, plan.opaque_types), plan.prunable)
    return PruneResult(model, speed, steps, history, list(plan.skipped), message, widths, orig)


def _keep_decoder_layers(model, options: PruneOptions, base: float, history: list[dict], on_step) -> float:
    """Drop decoder layers past ``options.decoder_layers`` (in place); return the GFLOPs after. A drop is recorded
    as its own history row (step 0, like the baseline: no channels were removed)."""
    if not options.decoder_layers or not family_of(model).adapter(model).keep_decoder_layers(options.decoder_layers):
        return base
    params, flops = metrics.params_and_gflops(model, options.imgsz)
    history.append(_row(0, params, flops, base))
    if on_step:
        on_step(history[-1])
    return flops


def _row(step: int, params: int, flops: float, base: float) -> dict:
    return {"step": step, "params": params, "gflops": round(flops, 4), "speed_up": round(base / flops, 4)}


def _widths(graph: TracedGraph, keys: list[str]) -> dict[str, int]:
    by_key = {graph.key(g): g for g in graph.all_groups()}
    return {k: graph.root_width(by_key[k]) for k in keys if k in by_key}


def _step_units(graph, keys, method, options, orig, unit, batches, model, level,
                costs: LayerCosts | None = None) -> tuple[list[Unit], list[Unit], int]:
    """This step's units (least important first), every removable unit, and the local shrink level. With ``costs``,
    units are ranked across groups by importance per millisecond saved (latency-aware)."""
    importance = method.importance()
    if method.needs_gradients:
        _accumulate_gradients(model, importance, batches, options.grad_batches)
    candidates: list[tuple[int, list[Unit]]] = []  # (group width, its units)
    for group in graph.all_groups():
        key = graph.key(group)
        if key not in keys:
            continue
        scores = importance(group)
        if scores is None:
            continue
        width = graph.root_width(group)
        out = graph.out_modules(group)
        block = graph.adapter.channel_block(out)  # e.g. whole attention heads
        units = group_units(key, scores, width, orig[key], unit, options.max_layer_ratio, block,
                            graph.adapter.channel_heads(out))  # e.g. as many from every deformable-attention head
        if units:
            candidates.append((width, units))
    model.zero_grad(set_to_none=True)
    if costs is not None:
        timing = FlopPlanner(graph, model, options.imgsz, 0.0, layer_cost=costs.at(model))  # predicts ms
        chosen = choose_global([u for _, u in candidates], options.step_ratio, timing.unit_cost)
    elif options.global_pruning:
        chosen = choose_global([u for _, u in candidates], options.step_ratio)
    else:
        chosen, level = choose_local(candidates, orig, options.step_ratio, level)
    pool = [u for _, units in candidates for u in units]
    return sorted(chosen, key=lambda u: u.score), pool, level


def _by_group(pool: list[Unit]) -> list[list[Unit]]:
    """``pool``'s units grouped by their group, each group's in its own order (least important first)."""
    groups: dict[str, list[Unit]] = {}
    for u in pool:
        groups.setdefault(u.key, []).append(u)
    return list(groups.values())


def _apply(model: nn.Module, plan: Plan, units: list[Unit]) -> nn.Module:
    """A pruned copy of ``model`` without the given units."""
    pruned = copy.deepcopy(model)
    idxs: dict[str, list[int]] = {}
    for u in units:
        idxs.setdefault(u.key, []).extend(u.idxs)
    trace(pruned, plan.opaque_types).prune(idxs)
    return pruned


def _take_step(model, plan, graph, units, pool, base, flops_now, options) -> tuple[nn.Module, int, float]:
    """Apply this step's units, or, if they would go past the target window, a subset that lands in it.

    Subsets are planned with a :class:`FlopPlanner` (no pruning needed to predict GFLOPs) and checked
    with Ultralytics' real count; a miss recalibrates the planner and plans again (three tries).
    Returns the pruned copy, its params and its GFLOPs.
    """
    f_max = base / options.speed_up
    f_min = base / (options.speed_up * (1 + options.tolerance))
    planner = FlopPlanner(graph, model, options.imgsz, flops_now)
    chosen = _plan(planner, units, pool, f_min, f_max)
    for _ in range(3):
        result = _trial(model, plan, chosen, options.imgsz)
        flops = result[2]
        if flops >= f_min and (flops <= f_max or chosen is units):  # in the window, or a full step short of it
            return result
        planner.recalibrate(planner.predict(chosen), flops)
        chosen = _plan(planner, units, pool, f_min, f_max)
    return result


def _plan(planner: FlopPlanner, units, pool, f_min, f_max):
    """The whole step if it stays above ``f_min``; else the shortest prefix reaching ``f_max``, topped up
    with better-sized units from the pool when a prefix can only jump past the window."""
    if planner.predict(units) >= f_min:
        return units
    lo, hi = 0, len(units)  # predict(units[:lo]) > f_max >= predict(units[:hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if planner.predict(units[:mid]) > f_max:
            lo = mid
        else:
            hi = mid
    if planner.predict(units[:hi]) >= f_min:
        return units[:hi]
    return _fill(planner, units[:lo], pool, f_min, f_max) or units[:hi]


def _fill(planner: FlopPlanner, taken, pool, f_min, f_max, rounds: int = 16, shortlist: int = 12):
    """Top ``taken`` up with units, each the one bringing the prediction closest to the window's middle
    without passing below it; None if no such sequence reaches the window."""
    goal = (f_min + f_max) / 2
    taken = list(taken)
    free = [u for u in pool if u not in set(taken)]
    current = planner.predict(taken)
    for _ in range(rounds):
        need = current - goal
        near = sorted(free, key=lambda u: abs(planner.unit_cost(u) - need))[:shortlist]
        trials = [(f, u) for u in near if (f := planner.predict(taken + [u])) >= f_min]
        if not trials:
            return None
        current, u = min(trials, key=lambda t: abs(t[0] - goal))
        taken.append(u)
        free.remove(u)
        if current <= f_max:
            return taken
    return None


def _trial(model, plan, units, imgsz) -> tuple[nn.Module, int, float]:
    pruned = _apply(model, plan, units)
    return (pruned, *metrics.params_and_gflops(pruned, imgsz))


def _accumulate_gradients(model: nn.Module, importance, batches: Batches, n: int) -> None:
    """Gradients of the detection loss over ``n`` batches, in eval mode (BatchNorm statistics untouched).

    Criteria with ``accumulate_grad`` (Hessian) get each batch's gradient separately; the others
    (Taylor) read the gradient summed over the batches from ``.grad``.
    """
    per_batch = hasattr(importance, "accumulate_grad")
    model.eval()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for i, batch in enumerate(progress(batches(), desc="importance batches", total=n, leave=False)):
        if i >= n:
            break
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if per_batch:
            model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = family_of(model).loss(model, batch)
            loss.sum().backward()
        if per_batch:
            importance.accumulate_grad(model)
