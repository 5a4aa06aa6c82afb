"""Latency-aware ranking (``--latency-aware``): remove the channels that lose the least importance per millisecond.

HALP-style: a per-layer cost table, measured once on the user's device and runtime
(:func:`~rtdetr_prune.bench.layer_times.layer_times`: milliseconds each conv/linear layer takes in a forward pass
of the base model), turns every unit into the time removing it saves. Per step, the table is scaled to the
model's current widths (a layer's time taken as proportional to its input and output widths, or to its one width
for a depthwise conv) and the pruning planner adds up, for each unit, the time of every layer it narrows
(:meth:`~rtdetr_prune.pruning.planner.FlopPlanner.unit_cost`, with milliseconds for GFLOPs). Units are then
ranked across all groups by importance / milliseconds saved (:func:`~rtdetr_prune.pruning.units.choose_global`),
so a layer that is slow for its FLOPs (memory-bound, badly blocked) gives up channels before one that is fast.

Example:
    >>> costs = LayerCosts.measure(model, batch=8, imgsz=640, backend="onnxruntime")
    >>> prune_to_target(model, get_method("lamp"), PruneOptions(speed_up=2, latency_aware=True), costs=costs)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rtdetr_prune.models import family_of


@dataclass(frozen=True)
class LayerCosts:
    """Milliseconds per layer of a base model, and the (in, out) widths it had then, by name in its fused copy."""

    ms: dict[str, float]
    widths: dict[str, tuple[int, int, bool]]  # name -> (in width, out width, depthwise)

    @classmethod
    def measure(cls, model: nn.Module, batch: int = 8, imgsz: int = 640, backend: str = "torch", device: str = "cpu",
                repeats: int = 3) -> "LayerCosts":
        """Time ``model``'s layers (see :func:`~rtdetr_prune.bench.layer_times.layer_times`)."""
        from rtdetr_prune.bench.layer_times import layer_times

        ms = layer_times(model, batch, imgsz, backend, device, repeats)
        return cls(ms, _widths(family_of(model).fused(model)))

    def at(self, model: nn.Module) -> dict[str, float]:
        """The table scaled to ``model``'s widths now (``model``: the base model, pruned), by fused-layer name."""
        now = _widths(family_of(model).fused(model))
        scaled = {}
        for name, ms in self.ms.items():
            if name not in now or name not in self.widths:
                continue
            (i0, o0, dw), (i1, o1, _) = self.widths[name], now[name]
            scaled[name] = ms * (o1 / o0 if dw else (i1 / i0) * (o1 / o0))
        return scaled


def _widths(fused: nn.Module) -> dict[str, tuple[int, int, bool]]:
    found = {}
    for name, m in fused.named_modules():
        if isinstance(m, nn.Linear):
            found[name] = (m.in_features, m.out_features, False)
        elif isinstance(m, nn.Conv2d):
            found[name] = (m.in_channels, m.out_channels, 1 < m.groups == m.in_channels == m.out_channels)
    return found
