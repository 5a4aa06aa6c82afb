"""Find what cannot be pruned, and why, so that nobody edits ignore lists by hand.

Three checks, cheapest first:
1. Tracing: if Torch-Pruning cannot trace the region, find the module types responsible (by
   making types opaque and releasing them one at a time) and keep those modules whole.
2. Static rules: groups touching a type protected by a rule (:mod:`rtdetr_prune.pruning.rules`), coupled to
   an opaque module, to a custom module's raw parameters or to a grouped (not depthwise) conv, or
   vetoed by the RT-DETR adapter (AIFI's embedding width); groups too narrow to lose a unit.
3. A zeroed-channel trial (:mod:`rtdetr_prune.pruning.analysis.trial`): on a copy, zero one unit of
   channels (spread over the width) in every remaining group, then remove exactly those channels.
   Removing channels that carry zeros must leave every output unchanged and the model must still run;
   if not, search out the groups at fault, alone or the sets of groups that fail only together. This
   catches groups Torch-Pruning prunes *wrongly* without crashing (a chunk, heads of an attention).

Every skip carries a ``kind`` (one of :data:`KINDS`) so that ``check`` can say what to do about it.

Example:
    >>> plan = analyse(load_model("rtdetr-tiny"), unit=8)
    >>> plan.prunable[:2], plan.skipped[:1]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from rtdetr_prune.errors import first_line
from rtdetr_prune.models import adapter_of, families
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis.trial import CHANGES, removal_trial
from rtdetr_prune.pruning.graph import TRACE_IMGSZ, TracedGraph, kept_modes, trace


@dataclass(frozen=True)
class Skip:
    """A layer (or group, named by its root layer) left unpruned, and the reason in plain words."""

    layer: str
    reason: str
    kind: str = "other"  # one of KINDS: what caused it, so that `check` can advise


KINDS = {
    "untraceable": "Torch-Pruning cannot trace the module",
    "coupled": "coupled to a module that cannot be traced",
    "custom-params": "coupled to a custom module's own parameters",
    "rule": "protected by a rule",
    "grouped-conv": "reaches a grouped convolution",
    "rtdetr": "kept by RT-DETR's design",
    "narrow": "too narrow to lose a unit",
    "breaks": "removing channels breaks the forward pass",
    "changes-outputs": "removing channels changes the kept channels' outputs",
    "option": "its part of the model is turned off (--decoder-parts)",
}


@dataclass
class Plan:
    """What may be pruned. Group keys are root-layer names (see :mod:`rtdetr_prune.pruning.graph`)."""

    prunable: list[str]
    skipped: list[Skip]
    opaque_types: tuple[type, ...] = ()
    parts: dict[str, str] = field(default_factory=dict)  # group key -> optional part it belongs to (e.g. "ffn")


def analyse(model: nn.Module, unit: int = 8, imgsz: int = TRACE_IMGSZ) -> Plan:
    """Decide which channel groups of ``model`` can be pruned (the model is not changed).

    Args:
        model: an RT-DETR of a registered family.
        unit: channels are removed in multiples of this (``round_to``).
        imgsz: side of the probe image, pixels (a multiple of 32).
    """
    opaque, skipped = find_untraceable(model, imgsz)
    graph = trace(model, opaque, imgsz)
    owners = _custom_param_owners(model, graph)
    protected = _protected_members(model)
    prunable, parts = [], {}
    for group in graph.all_groups():
        key = graph.key(group)
        part = graph.adapter.group_part(graph.out_modules(group))
        if part:
            parts[key] = part
        skip = _protected_reason(graph, group, protected) or _static_reason(graph, group, opaque, owners, unit)
        if skip:
            skipped.append(Skip(key, *skip))
        else:
            prunable.append(key)
    broken = _bisect_failures(model, opaque, prunable, unit, imgsz)
    skipped += [Skip(k, *_trial_reason(msg)) for k, msg in broken.items()]
    prunable = [k for k in prunable if k not in broken]
    return Plan(prunable, skipped, opaque, parts)


def find_untraceable(model: nn.Module, imgsz: int = TRACE_IMGSZ) -> tuple[tuple[type, ...], list[Skip]]:
    """Module types Torch-Pruning cannot trace, as a small opaque set, with one Skip per module.

    Tries one type at a time (users' own types first); if no single type is to blame, makes types
    opaque one by one until tracing works, then releases those that were not needed.
    """
    try:
        trace(model, (), imgsz)
        return (), []
    except Exception as e:  # noqa: BLE001 - any tracing failure is what we are looking for
        error = first_line(e)
    region_modules = list(adapter_of(model).region_modules())
    candidates = _candidate_types(region_modules, _tensor_output_types(model, imgsz))
    single = next(((t,) for t in candidates if _traces(model, (t,), imgsz)), None)
    opaque = single or _grow_then_shrink(model, candidates, imgsz)
    skips = [
        Skip(name, f"Torch-Pruning cannot trace {type(m).__name__} ({error}); it and every group "
             "coupled to it are kept whole", "untraceable")
        for name, m in region_modules
        if isinstance(m, opaque)
    ]
    return opaque, skips


def _traces(model, opaque, imgsz) -> bool:
    try:
        trace(model, opaque, imgsz)
        return True
    except Exception:  # noqa: BLE001
        return False


def _grow_then_shrink(model, candidates, imgsz) -> tuple[type, ...]:
    opaque: list[type] = []
    for t in candidates:
        opaque.append(t)
        if _traces(model, tuple(opaque), imgsz):
            break
    else:
        raise RuntimeError("Torch-Pruning cannot trace this model, whichever layers are kept whole")
    for t in list(opaque):
        trial = tuple(o for o in opaque if o is not t)
        if trial and _traces(model, trial, imgsz):
            opaque = list(trial)
    return tuple(opaque)


def _candidate_types(named_modules, tensor_types: set[type]) -> list[type]:
    """Module classes that could be made opaque, outermost first.

    Only classes whose every call returns one tensor qualify (Torch-Pruning reads the output's
    autograd node); its own leaf types (conv, norm, linear...) never need it.
    """
    leaf_types = tuple(tp.ops.type2class(t) for t in tp.pruner.function.PrunerBox if tp.ops.type2class(t))
    seen: list[type] = []
    for name, m in named_modules:
        t = type(m)
        ruled = t in rules.customized_pruners()  # the user's pruner already makes it a leaf
        if name and t in tensor_types and t not in seen and not issubclass(t, leaf_types) and not ruled:
            seen.append(t)
    return sorted(seen, key=lambda t: not _is_custom(t))  # users' own types first (stable sort)


def _is_custom(t: type) -> bool:
    """A user's own module type: not from torch, torchvision, this package or a model family's library."""
    known = {"torch", "torchvision", "rtdetr_prune", *(p for f in families() for p in f.library_packages)}
    return t.__module__.split(".")[0] not in known


def _tensor_output_types(model: nn.Module, imgsz: int) -> set[type]:
    """Classes of the region's modules whose outputs were always single tensors in one forward pass."""
    ok: dict[type, bool] = {}

    def hook(m, inputs, output):
        ok[type(m)] = ok.get(type(m), True) and isinstance(output, torch.Tensor)

    adapter = adapter_of(model)
    handles = [m.register_forward_hook(hook) for _, m in adapter.region_modules()]
    try:
        with torch.no_grad(), kept_modes(model):
            adapter.region().eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {t for t, good in ok.items() if good}


def _static_reason(graph: TracedGraph, group, opaque, owners, unit) -> tuple[str, str] | None:
    """(reason, kind) when a group can be ruled out without trying it."""
    touched = graph.touched_modules(group)
    for m in touched:
        if isinstance(m, opaque):
            return (f"coupled to {graph.names.get(m, '?')} ({type(m).__name__}), which cannot be traced", "coupled")
    for m in touched:
        if isinstance(m, nn.Parameter) and m in owners:
            name, owner = owners[m]
            return (f"coupled to custom module {name} ({type(owner).__name__}), which holds its own parameters "
                    "that Torch-Pruning does not know how to slice", "custom-params")
    for m in touched:
        if _is_grouped(m):
            return (f"reaches {graph.names.get(m, '?')}, a grouped convolution ({m.in_channels} in, "
                    f"{m.out_channels} out, groups={m.groups}; only one-to-one depthwise convs are handled): removing "
                    "channels would have to keep every group the same size, which Torch-Pruning does not do",
                    "grouped-conv")
    veto = graph.adapter.group_veto(graph.out_modules(group))
    if veto:
        return veto, "rtdetr"
    width = graph.root_width(group)
    if width <= unit:
        return f"only {width} channels: nothing can go at round_to={unit}", "narrow"
    return None


def _is_grouped(m) -> bool:
    """A conv with groups that are neither one nor one channel each (depthwise)."""
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
            and not m.groups == m.in_channels == m.out_channels)


def _protected_members(model: nn.Module) -> dict[nn.Module, str]:
    """Every submodule of an instance of a type the user protected (rules.protect), with the reason."""
    types = rules.protected_types()
    members = {}
    for name, m in model.named_modules():
        if type(m) in types:
            reason = f"inside {name} ({type(m).__name__}), protected by a rule: {types[type(m)]}"
            members.update({sub: reason for sub in m.modules()})
    return members


def _protected_reason(graph: TracedGraph, group, protected: dict) -> tuple[str, str] | None:
    reason = next((protected[m] for m in graph.touched_modules(group) if m in protected), None)
    return (reason, "rule") if reason else None


def _custom_param_owners(model: nn.Module, graph: TracedGraph) -> dict:
    """Raw parameters of the user's own modules (see :func:`_is_custom`) -> (name, module).

    Modules with a prune rule, and everything inside them, are left out: their pruner slices them.
    """
    ruled = {sub for m in model.modules() if type(m) in rules.customized_pruners() for sub in m.modules()}
    owners = {}
    for name, m in model.named_modules():
        if not _is_custom(type(m)) or m in ruled:
            continue
        for p in m._parameters.values():
            if p is not None:
                owners[p] = (name, m)
    return owners


def _bisect_failures(model, opaque, keys: list[str], unit: int, imgsz: int) -> dict[str, str]:
    """Groups whose trial removal fails, with what went wrong.

    While the trial of the groups left fails, find a smallest set of them that fails together
    (:func:`_failing_set`) and take it out: one group that fails alone, or several that fail only
    together (a rule that goes wrong only when two groups both lose channels). Every member of such a
    set is reported, since which of them is at fault cannot be told apart.
    """
    def trial(subset):
        return removal_trial(model, opaque, subset, unit, imgsz)

    broken: dict[str, str] = {}
    left = list(keys)
    while left and trial(left) is not None:
        culprits, error = _failing_set(left, trial)
        for k in culprits:
            others = [c for c in culprits if c != k]
            broken[k] = error + (f" (when removed together with {', '.join(others)}; no smaller set of these "
                                 "groups fails, so all are kept whole)" if others else "")
        left = [k for k in left if k not in culprits]
    return broken


def _failing_set(keys: list[str], trial) -> tuple[list[str], str]:
    """A smallest set of ``keys`` whose trial fails (``trial(keys)`` must fail), and its error.

    Grows the set one group at a time: the group that first makes a failing prefix fail is needed, so
    it joins the set, and the search repeats among the groups before it until the set fails alone
    (a binary search per member: ~log2(len(keys)) trials each).
    """
    needed: list[str] = []
    pool = list(keys)
    while True:
        error = trial(needed) if needed else None
        if error is not None:
            return needed, error
        lo, hi = 0, len(pool)  # trial(needed + pool[:lo]) passes, trial(needed + pool[:hi]) fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if trial(needed + pool[:mid]) is None:
                lo = mid
            else:
                hi = mid
        if hi == 0:  # only a trial that is not monotonic gets here: keep the whole set out
            return needed + pool, "fails only in some combinations of these groups"
        needed.append(pool[hi - 1])
        pool = pool[:hi - 1]


def _trial_reason(error: str) -> tuple[str, str]:
    if error.startswith(CHANGES):
        return (f"removing its channels changes what the remaining channels compute ({error}): Torch-Pruning "
                "misreads how the block uses them, typically a chunk or split of one layer's output, a reshape "
                "into attention heads, or a scale computed from the width", "changes-outputs")
    return f"removing its channels breaks the forward pass: {error}", "breaks"
