"""Can this model be pruned, how much, what is left alone and why, and what to do about it.

(``rtdetr-prune check``.) Besides the reason for each layer left whole, each entry says what the
user can do (register a rule, rewrite the block, or accept it) and what it costs:

- ``gflops_share``: the share of the model's conv/linear GFLOPs in the layers whose output channels the
  skip keeps whole (for a module that cannot be traced: all its layers). Every layer's outputs belong
  to one group, so these shares add up; a layer's cost also depends on its inputs, which another
  group may still shrink, so this is what the skip holds, not what pruning it would save.
- ``speed_up_if_prunable``: the max reachable speed-up if this one skip were lifted and its channels
  could go as far as every prunable group's (same ``round_to`` and ``max_layer_ratio``). Predicted from
  layer shapes (:class:`~rtdetr_prune.pruning.planner.FlopPlanner`) relative to the measured max, so it is
  cheap; None where no estimate is possible (a module that cannot be traced: its layers are not in
  the graph at all).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn

from rtdetr_prune.measure import counts
from rtdetr_prune.measure.layers import conv_linear_gflops
from rtdetr_prune.models import adapter_of
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis.parts import part_keys, require_support, resolve_parts, restrict
from rtdetr_prune.pruning.analysis.prunable import Plan, analyse
from rtdetr_prune.pruning.graph import TracedGraph, trace
from rtdetr_prune.pruning.planner import FlopPlanner
from rtdetr_prune.pruning.units import Unit, group_units
from rtdetr_prune.recipe import DECODER_PARTS, default, validate

GUIDE = "docs/custom-structures.md"
# What the user can do, per kind of skip (probe.KINDS), in words.
ADVICE = {
    "untraceable": ("register a rewrite that replaces it with traceable layers giving the same outputs, or a "
                    "prune_rule that makes it one leaf Torch-Pruning does not look into; or accept it: the rest of "
                    f"the model still prunes ({GUIDE}, 'A module that cannot be traced')"),
    "coupled": "follows the untraceable module it touches: fix that module (its own entry) and this group is freed",
    "custom-params": ("register a prune_rule for the module: a torch_pruning BasePruningFunc that slices its "
                      f"parameters ({GUIDE}, 'Writing a prune_rule'); or rules.protect it to accept it"),
    "rule": "you protected this type with rules.protect; rules.unregister(cls) (or drop the --plugin) to prune it",
    "grouped-conv": ("accept it, or build the block from a depthwise conv and a 1x1 conv instead of a grouped "
                     "conv: both prune"),
    "rtdetr": "accept it: this width is fixed by RT-DETR's design",
    "narrow": "accept it (little to gain), or lower --round-to (e.g. 4) so narrow groups can lose channels",
    "breaks": ("rewrite the block into an equivalent one whose channels Torch-Pruning follows: one conv per part "
               "instead of a chunk/split (the built-in C2f rewrite does this), per-head q/k/v projections for "
               f"attention split into heads; or register a prune_rule; or accept it ({GUIDE})"),
    "decoder": "accept it: these widths are the model's outputs or its sampling layout",
    "option": "turn its part on with --decoder-parts (prune it) if the time it saves is worth its accuracy",
    "protected": "accept it: the model's family keeps this part whole",
    "other": f"see {GUIDE}",
}
ADVICE["changes-outputs"] = ADVICE["breaks"]


def check_model(model: nn.Module, imgsz: int = default("imgsz"), round_to: int = default("round_to"),
                max_layer_ratio: float = default("max_layer_ratio"), plan: Plan | None = None,
                decoder_parts: str = default("decoder_parts"), decoder_layers: int = default("decoder_layers")) -> dict:
    """Prunability report of an RT-DETR model.

    Args:
        model: the detection model (not changed; registered rewrites are applied to a copy).
        imgsz: image side for GFLOPs, pixels.
        round_to: channel unit, as for pruning.
        max_layer_ratio: largest share of a group's channels pruning may remove.
        plan: a precomputed :func:`~rtdetr_prune.pruning.analysis.prunable.analyse` result (of the rewritten model).
        decoder_parts: the decoder parts pruning may shrink (a ``--decoder-parts`` value); the others are listed
            as skipped (kind "option") with what each would add.
        decoder_layers: keep only the first K decoder layers first (0: all); counted in ``max_speed_up``.

    Returns:
        A JSON-ready dict: ``prunable`` (bool), ``groups`` (prunable group count), ``gflops``,
        ``share`` (fractions of conv/linear GFLOPs in ``prunable``, ``protected`` and ``skipped``
        layers), ``max_speed_up`` (reachable with these settings), ``max_speed_up_if_all_prunable``
        (predicted, were every skipped group prunable), ``protected`` and ``skipped`` (lists of
        ``{"layer", "reason", "kind", "advice", "gflops_share", "speed_up_if_prunable"}``; see the
        module docstring), ``rewritten`` (names of the layers rewritten first) and ``rewrites``
        (``{"layer", "from", "to"}`` for each), ``parts`` (per decoder part: ``enabled``, ``groups``,
        ``gflops_share`` of the layers whose outputs its groups prune, ``speed_up_toggled``: the max speed-up
        predicted with that part's setting flipped) and ``decoder_layers`` (kept, total).

    Example:
        >>> r = check_model(load_model("rtdetr-tiny", nc=3), imgsz=160)
        >>> r["max_speed_up"], [(s["layer"], s["advice"]) for s in r["skipped"]][:1]
    """
    validate(SimpleNamespace(imgsz=imgsz, round_to=round_to, max_layer_ratio=max_layer_ratio,
                             decoder_parts=decoder_parts, decoder_layers=decoder_layers))
    decoder_parts = resolve_parts(model, decoder_parts)
    require_support(model, decoder_parts, decoder_layers)
    model = copy.deepcopy(model)
    rewritten = rules.apply_rewrites(model)
    full = restrict(plan or analyse(model, round_to), ",".join(DECODER_PARTS))
    plan = restrict(full, decoder_parts)
    base = counts.gflops(model, imgsz)
    layers = (adapter_of(model).decoder_layers(),) * 2
    if decoder_layers:
        layers = (layers[0] - adapter_of(model).keep_decoder_layers(decoder_layers), layers[1])
    graph = trace(model, plan.opaque_types)
    cost = conv_linear_gflops(model, imgsz)
    floor = _prune_to_floor(model, plan, round_to, max_layer_ratio)
    max_speed = base / counts.gflops(floor, imgsz) if plan.prunable else 1.0
    losses = _Losses(model, graph, plan, cost, imgsz, base, max_speed, round_to, max_layer_ratio)
    protected = adapter_of(model).protected()
    modules = dict(model.named_modules())
    return {
        "prunable": bool(plan.prunable),
        "groups": len(plan.prunable),
        "gflops": round(base, 3),
        "share": {k: round(v, 4) for k, v in _flops_shares(model, graph, plan, cost).items()},
        "max_speed_up": round(max_speed, 3),
        "max_speed_up_if_all_prunable": round(losses.if_all_prunable(), 3),
        "settings": {"imgsz": imgsz, "round_to": round_to, "max_layer_ratio": max_layer_ratio},
        "protected": [_entry(p.layer, p.reason, p.kind, losses.share_of(list(p.modules)), None) for p in protected],
        "skipped": [_entry(s.layer, s.reason, s.kind, *losses.of(s.layer)) for s in plan.skipped],
        "rewritten": rewritten,
        "rewrites": [{"layer": n, "from": getattr(modules[n], rules.REWRITTEN_FROM, "?").rsplit(".", 1)[-1],
                      "to": type(modules[n]).__name__} for n in rewritten],
        "parts": _parts(full, plan, graph, losses),
        "decoder_layers": {"kept": layers[0], "total": layers[1]},
    }


def _parts(full: Plan, plan: Plan, graph: TracedGraph, losses: "_Losses") -> dict:
    """Per decoder part: on or off, its groups, the GFLOPs share its groups' layers hold, and the max speed-up
    predicted with the part flipped (on: without it; off: with it)."""
    groups = {graph.key(g): g for g in graph.all_groups()}
    on, found = set(plan.prunable), {}
    for part in DECODER_PARTS:
        keys = [k for k in part_keys(full, part) if k in groups and k in set(full.prunable)]
        if not keys:
            continue
        enabled = any(k in on for k in keys)
        units = [u for k in keys for u in losses.units.get(k, [])]
        found[part] = {"enabled": enabled, "groups": len(keys),
                       "gflops_share": round(losses.share_of([m for k in keys for m in graph.out_modules(groups[k])]), 4),
                       "speed_up_toggled": round(losses.without(units) if enabled else losses.with_(units), 3)}
    return found


def _entry(layer: str, reason: str, kind: str, share: float, speed_if: float | None) -> dict:
    return {"layer": layer, "reason": reason, "kind": kind, "advice": ADVICE.get(kind, ADVICE["other"]),
            "gflops_share": round(share, 4), "speed_up_if_prunable": None if speed_if is None else round(speed_if, 3)}


class _Losses:
    """What each skip costs: its GFLOPs share, and the max speed-up were it prunable (see module docstring)."""

    def __init__(self, model, graph: TracedGraph, plan: Plan, cost, imgsz, base, max_speed, unit, max_ratio):
        self.model, self.graph, self.cost, self.max_speed = model, graph, cost, max_speed
        self.total = sum(cost.values()) or 1.0
        self.groups = {graph.key(g): g for g in graph.all_groups()}
        self.units = {k: _floor_units(graph, g, k, unit, max_ratio) for k, g in self.groups.items()}
        self.planner = FlopPlanner(graph, model, imgsz, base)
        self.taken = [u for k in plan.prunable for u in self.units.get(k, [])]
        self.floor = self.planner.predict(self.taken)

    def of(self, layer: str) -> tuple[float, float | None]:
        group = self.groups.get(layer)
        if group is None:  # a module kept whole (cannot be traced): its own layers
            module = dict(self.model.named_modules()).get(layer)
            return self.share_of(list(module.modules()) if module is not None else []), None
        return self.share_of(self.graph.out_modules(group)), self._speed_with(self.units[layer])

    def share_of(self, modules) -> float:
        return sum(self.cost.get(m, 0.0) for m in set(modules) if isinstance(m, nn.Module)) / self.total

    def if_all_prunable(self) -> float:
        return self._speed_with([u for units in self.units.values() for u in units if u not in set(self.taken)])

    def with_(self, extra: list[Unit]) -> float:
        """Max speed-up predicted with ``extra`` units cut too."""
        return self._speed_with(extra)

    def without(self, units: list[Unit]) -> float:
        """Max speed-up predicted without cutting ``units`` (of groups now cut to their floor)."""
        gone = set(units)
        return self.max_speed * self.floor / self.planner.predict([u for u in self.taken if u not in gone])

    def _speed_with(self, extra: list[Unit]) -> float:
        if not extra:
            return self.max_speed
        return self.max_speed * self.floor / self.planner.predict(self.taken + extra)


def _floor_units(graph: TracedGraph, group, key: str, unit: int, max_ratio: float) -> list[Unit]:
    width = graph.root_width(group)
    out = graph.out_modules(group)
    block, heads = graph.adapter.channel_block(out), graph.adapter.channel_heads(out)
    return group_units(key, torch.arange(width, dtype=torch.float), width, width, unit, max_ratio, block, heads)


def _flops_shares(model: nn.Module, graph: TracedGraph, plan: Plan, cost) -> dict[str, float]:
    """Shares of conv/linear GFLOPs in layers that shrink, in protected parts (the decoder), and in the rest."""
    prunable = set(plan.prunable)
    touched = {m for g in graph.all_groups() if graph.key(g) in prunable for m in graph.touched_modules(g)}
    decoder = set(graph.adapter.protected_modules())
    sums = {"prunable": 0.0, "protected": 0.0, "skipped": 0.0}
    for m, c in cost.items():
        kind = "prunable" if m in touched else "protected" if m in decoder else "skipped"
        sums[kind] += c
    total = sum(sums.values()) or 1.0
    return {k: v / total for k, v in sums.items()}


def _prune_to_floor(model: nn.Module, plan: Plan, unit: int, max_ratio: float) -> nn.Module:
    """A copy with every prunable group cut to its floor (the most pruning can ever remove)."""
    pruned = copy.deepcopy(model)
    graph = trace(pruned, plan.opaque_types)
    keys = set(plan.prunable)
    idxs = {}
    for g in graph.all_groups():
        key = graph.key(g)
        if key in keys:
            idxs[key] = [i for u in _floor_units(graph, g, key, unit, max_ratio) for i in u.idxs]
    graph.prune(idxs)
    return pruned


def format_check(r: dict) -> str:
    """Plain-text rendering of :func:`check_model`'s result: skips grouped by cause, costliest first,
    each cause with what to do about it."""
    s, st = r["share"], r["settings"]
    lines = [
        f"model: {r.get('model', '?')}   GFLOPs@{st['imgsz']}: {r['gflops']}",
        f"prunable: {'yes' if r['prunable'] else 'no'} ({r['groups']} channel groups)",
        f"GFLOPs share: prunable {s['prunable']:.1%}, protected (decoder) {s['protected']:.1%}, "
        f"skipped {s['skipped']:.1%}",
        f"max reachable speed-up: {r['max_speed_up']:.2f}x (round_to={st['round_to']}, "
        f"max_layer_ratio={st['max_layer_ratio']}); about {r['max_speed_up_if_all_prunable']:.2f}x if every "
        "skipped group were prunable",
    ]
    if r.get("parts"):
        lines.append("decoder parts (--decoder-parts): " + "; ".join(
            f"{name} {'on' if p['enabled'] else 'off'} ({p['groups']} groups, {p['gflops_share']:.1%} GFLOPs, "
            f"{'without' if p['enabled'] else 'with'} it -> {p['speed_up_toggled']:.2f}x)" for name, p in r["parts"].items()))
    layers = r.get("decoder_layers") or {}
    if layers.get("total") and layers["kept"] < layers["total"]:
        lines.append(f"decoder layers: the first {layers['kept']} of {layers['total']} kept (--decoder-layers)")
    if r.get("rewrites"):
        lines.append("rewritten first (same outputs, prunable): "
                     + ", ".join(f"{w['layer']} ({w['from']} -> {w['to']})" for w in r["rewrites"]))
    lines += ["protected:", *_format_entries(r["protected"], r["max_speed_up"])]
    lines.append(f"skipped ({len(r['skipped'])}), costliest cause first:")
    lines += _format_entries(r["skipped"], r["max_speed_up"])
    lines.append("(x% GFLOPs: share of conv/linear GFLOPs in the layers whose outputs it keeps whole; "
                 "-> N.NNx: max reachable speed-up were it prunable.)")
    return "\n".join(lines)


def _format_entries(entries: list[dict], max_speed: float) -> list[str]:
    by_kind: dict[str, list[dict]] = {}
    for e in entries:
        by_kind.setdefault(e.get("kind", "other"), []).append(e)

    def gain(e):
        return (e.get("speed_up_if_prunable") or max_speed) - max_speed

    def cost(kind_items):
        return -max(map(gain, kind_items[1])), -sum(e["gflops_share"] for e in kind_items[1])

    lines = []
    for kind, items in sorted(by_kind.items(), key=cost):
        lines.append(f"  [{kind}] what to do: {items[0].get('advice', ADVICE['other'])}")
        for e in sorted(items, key=lambda e: (-gain(e), -e["gflops_share"])):
            speed = e.get("speed_up_if_prunable")
            held = f"{e['gflops_share']:.1%} GFLOPs" + (f", -> {speed:.2f}x" if speed and speed > max_speed else "")
            lines.append(f"    {e['layer']}: {e['reason']} [{held}]")
    return lines
