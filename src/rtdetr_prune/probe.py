"""Find what cannot be pruned, and why, so that nobody edits ignore lists by hand.

Three checks, cheapest first:
1. Tracing: if Torch-Pruning cannot trace the region, find the module types responsible (by
   making types opaque and releasing them one at a time) and keep those modules whole.
2. Static rules: groups coupled to an opaque module, to a custom module's raw parameters, or
   vetoed by the RT-DETR adapter (AIFI's embedding width); groups too narrow to lose a unit.
3. A trial: on a copy, remove one channel unit from every remaining group and run the model;
   if it breaks, bisect to the groups that break it.

Example:
    >>> plan = analyse(load_model("rtdetr-tiny"), unit=8)
    >>> plan.prunable[:2], plan.skipped[:1]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from rtdetr_prune import rules
from rtdetr_prune.adapter import RTDETRAdapter
from rtdetr_prune.graph import TRACE_IMGSZ, TracedGraph, trace


@dataclass(frozen=True)
class Skip:
    """A layer (or group, named by its root layer) left unpruned, and the reason in plain words."""

    layer: str
    reason: str


@dataclass
class Plan:
    """What may be pruned. Group keys are root-layer names (see :mod:`rtdetr_prune.graph`)."""

    prunable: list[str]
    skipped: list[Skip]
    opaque_types: tuple[type, ...] = ()


def analyse(model: nn.Module, unit: int = 8, imgsz: int = TRACE_IMGSZ) -> Plan:
    """Decide which channel groups of ``model`` can be pruned (the model is not changed).

    Args:
        model: an RT-DETR detection model.
        unit: channels are removed in multiples of this (``round_to``).
        imgsz: side of the probe image, pixels (a multiple of 32).
    """
    opaque, skipped = find_untraceable(model, imgsz)
    graph = trace(model, opaque, imgsz)
    owners = _custom_param_owners(model, graph)
    protected = _protected_members(model)
    prunable = []
    for group in graph.all_groups():
        key = graph.key(group)
        reason = _protected_reason(graph, group, protected) or _static_reason(graph, group, opaque, owners, unit)
        if reason:
            skipped.append(Skip(key, reason))
        else:
            prunable.append(key)
    broken = _bisect_failures(model, opaque, prunable, unit, imgsz)
    skipped += [Skip(k, f"removing its channels breaks the forward pass: {msg}") for k, msg in broken.items()]
    prunable = [k for k in prunable if k not in broken]
    return Plan(prunable, skipped, opaque)


def find_untraceable(model: nn.Module, imgsz: int = TRACE_IMGSZ) -> tuple[tuple[type, ...], list[Skip]]:
    """Module types Torch-Pruning cannot trace, as a small opaque set, with one Skip per module.

    Tries one type at a time (users' own types first); if no single type is to blame, makes types
    opaque one by one until tracing works, then releases those that were not needed.
    """
    try:
        trace(model, (), imgsz)
        return (), []
    except Exception as e:  # noqa: BLE001 - any tracing failure is what we are looking for
        error = _first_line(e)
    region_modules = list(model.model[:-1].named_modules())
    candidates = _candidate_types(region_modules, _tensor_output_types(model, imgsz))
    single = next(((t,) for t in candidates if _traces(model, (t,), imgsz)), None)
    opaque = single or _grow_then_shrink(model, candidates, imgsz)
    skips = [
        Skip(f"model.{name}", f"Torch-Pruning cannot trace {type(m).__name__} ({error}); it and every group "
             "coupled to it are kept whole. Register a pruning rule for it, or rewrite it")
        for name, m in region_modules
        if isinstance(m, opaque) and name
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
        if name and t in tensor_types and t not in seen and not issubclass(t, leaf_types):
            seen.append(t)
    return sorted(seen, key=lambda t: not _is_custom(t))  # users' own types first (stable sort)


def _is_custom(t: type) -> bool:
    return t.__module__.split(".")[0] not in {"torch", "ultralytics", "rtdetr_prune", "torchvision"}


def _tensor_output_types(model: nn.Module, imgsz: int) -> set[type]:
    """Classes of the region's modules whose outputs were always single tensors in one forward pass."""
    ok: dict[type, bool] = {}

    def hook(m, inputs, output):
        ok[type(m)] = ok.get(type(m), True) and isinstance(output, torch.Tensor)

    handles = [m.register_forward_hook(hook) for m in model.model[:-1].modules()]
    try:
        with torch.no_grad():
            RTDETRAdapter(model).region().eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {t for t, good in ok.items() if good}


def _static_reason(graph: TracedGraph, group, opaque, owners, unit) -> str | None:
    touched = graph.touched_modules(group)
    for m in touched:
        if isinstance(m, opaque):
            return f"coupled to {graph.names.get(m, '?')} ({type(m).__name__}), which cannot be traced"
    for m in touched:
        if isinstance(m, nn.Parameter) and m in owners:
            name, owner = owners[m]
            return (f"coupled to custom module {name} ({type(owner).__name__}), which holds its own parameters; "
                    "register a pruning rule for it")
    veto = graph.adapter.group_veto(graph.out_modules(group))
    if veto:
        return veto
    width = graph.root_width(group)
    if width <= unit:
        return f"only {width} channels: nothing can go at round_to={unit}"
    return None


def _protected_members(model: nn.Module) -> dict[nn.Module, str]:
    """Every submodule of an instance of a type the user protected (rules.protect), with the reason."""
    types = rules.protected_types()
    members = {}
    for name, m in model.named_modules():
        if type(m) in types:
            reason = f"inside {name} ({type(m).__name__}), protected by a rule: {types[type(m)]}"
            members.update({sub: reason for sub in m.modules()})
    return members


def _protected_reason(graph: TracedGraph, group, protected: dict) -> str | None:
    return next((protected[m] for m in graph.touched_modules(group) if m in protected), None)


def _custom_param_owners(model: nn.Module, graph: TracedGraph) -> dict:
    """Raw parameters of modules outside torch/ultralytics/rtdetr_prune -> (name, module)."""
    owners = {}
    for name, m in model.named_modules():
        if not _is_custom(type(m)):
            continue
        for p in m._parameters.values():
            if p is not None:
                owners[p] = (name, m)
    return owners


def _bisect_failures(model, opaque, keys: list[str], unit: int, imgsz: int) -> dict[str, str]:
    """Groups whose trial removal breaks the model, with the error; assumes failures are per group."""
    error = _trial(model, opaque, keys, unit, imgsz)
    if error is None:
        return {}
    if len(keys) == 1:
        return {keys[0]: error}
    mid = len(keys) // 2
    return {**_bisect_failures(model, opaque, keys[:mid], unit, imgsz),
            **_bisect_failures(model, opaque, keys[mid:], unit, imgsz)}


def _trial(model, opaque, keys, unit, imgsz) -> str | None:
    """Remove the first ``unit`` channels of each group on a copy and run it; the error, if any."""
    if not keys:
        return None
    m = copy.deepcopy(model)
    try:
        trace(m, opaque, imgsz).prune({k: list(range(unit)) for k in keys})
        x = torch.zeros(1, 3, imgsz, imgsz, device=next(m.parameters()).device)
        with torch.no_grad():
            m.eval()(x)
            m.train()(x)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        return _first_line(e)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
