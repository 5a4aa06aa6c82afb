"""Dependency graphs of a model's traced region, and the channel groups in it.

A *group* is Torch-Pruning's set of coupled channels: removing channel i of its root layer removes
channel i of every layer coupled to it (BatchNorm, residual adds, concats, next layers' inputs). We
identify a group by its root layer's name in the detection model (``"model.10.cv1.conv"``), which
survives pruning, so plans and skip lists can be carried from one graph to the next.

Layer *types* that Torch-Pruning cannot trace are made opaque: registered as customized layers
whose channels cannot be pruned, so the rest of the model still traces; every group touching them
is then skipped (see :mod:`rtdetr_prune.pruning.analysis.prunable`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from rtdetr_prune.models import Adapter, adapter_of
from rtdetr_prune.pruning import rules

ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
TRACE_IMGSZ = 64  # channel structure does not depend on resolution; small is fast. Multiple of 32.


class OpaquePruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning layer handler for modules it cannot trace into: channels known, never pruned."""

    def __init__(self, channels: dict[nn.Module, tuple[int | None, int | None]]):
        super().__init__()
        self.channels = channels  # module -> (in_channels, out_channels), measured by a forward probe

    def prune_out_channels(self, layer, idxs):
        raise RuntimeError(f"{type(layer).__name__} is opaque to the pruner; its groups must be skipped")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return self.channels.get(layer, (None, None))[1]

    def get_in_channels(self, layer):
        return self.channels.get(layer, (None, None))[0]


@dataclass
class TracedGraph:
    """A built dependency graph plus the names the user knows the layers by."""

    DG: tp.DependencyGraph
    adapter: Adapter
    names: dict[nn.Module, str] = field(default_factory=dict)  # module -> name in the detection model

    def all_groups(self) -> list:
        """Every group rooted at a conv/linear whose output is not protected (TP's own filter)."""
        ignored = list(self.adapter.protected_modules())
        return list(self.DG.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES))

    def key(self, group) -> str:
        """Stable name of a group: its root layer's name in the detection model."""
        return self.names[group[0].dep.target.module]

    def root_width(self, group) -> int:
        return len(group[0].idxs)

    def out_modules(self, group) -> list[nn.Module]:
        """Modules whose output channels (or own parameters) this group removes."""
        out = []
        for dep, _ in group:
            m = dep.target.module
            if self.DG.is_out_channel_pruning_fn(dep.handler) or not isinstance(m, nn.Module):
                out.append(m)
        return out

    def touched_modules(self, group) -> list:
        """Every module or raw parameter the group changes (inputs or outputs)."""
        return [dep.target.module for dep, _ in group]

    def prune(self, key_to_idxs: dict[str, list[int]]) -> None:
        """Remove the given root-channel indices from each named group, all in this graph's model."""
        by_key = {self.key(g): g for g in self.all_groups()}
        for key, idxs in key_to_idxs.items():
            if idxs:
                g = by_key[key]
                self.DG.get_pruning_group(g[0].dep.target.module, g[0].dep.handler, sorted(idxs)).prune()
        self.adapter.after_prune()


def trace(model: nn.Module, opaque_types: tuple[type, ...] = (), imgsz: int = TRACE_IMGSZ) -> TracedGraph:
    """Build the dependency graph of ``model``'s traced region (its family's :class:`~rtdetr_prune.models.Adapter`).

    Args:
        model: an RT-DETR (channels of the region get pruned in place later).
        opaque_types: module classes to treat as untraceable black boxes.
        imgsz: side of the zero image used for tracing, in pixels.

    Raises:
        Whatever Torch-Pruning raises when it cannot trace the region.
    """
    adapter = adapter_of(model)
    region = adapter.region()
    example = torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device)
    customized = rules.customized_pruners()  # users' rules for their own module types
    # TP follows autograd: frozen parameters (Ultralytics saves finished checkpoints frozen) would leave
    # no graph to trace, and every group would silently vanish. Trace with gradients on, then restore.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    with kept_modes(model):  # the probe and Torch-Pruning run the region in eval mode
        if opaque_types:
            pruner = OpaquePruner(_probe_channels(region, example, opaque_types))
            customized.update({t: pruner for t in opaque_types})
        try:
            for p in frozen:
                p.requires_grad_(True)
            DG = tp.DependencyGraph().build_dependency(  # a tuple: TP calls model(*example_inputs) first
                region, example_inputs=(example,), customized_pruners=customized, verbose=False
            )
        finally:
            for p in frozen:
                p.requires_grad_(False)
    names = {m: adapter.display_name(n) for n, m in region.named_modules()}
    names.update({p: adapter.display_name(n) for n, p in region.named_parameters()})
    return TracedGraph(DG, adapter, names)


@contextlib.contextmanager
def kept_modes(model: nn.Module):
    """Within the block, run ``model`` in any mode; after it, every submodule is back in its own mode
    (train or eval, as the caller left each one)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _probe_channels(region: nn.Module, example: torch.Tensor, types: tuple[type, ...]):
    """Measure (in, out) channels of every module of the given types with one forward pass."""
    found: dict[nn.Module, tuple[int | None, int | None]] = {}

    def hook(m, inputs, output):
        x = inputs[0] if inputs else None
        c_in = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() > 1 else None
        c_out = output.shape[1] if isinstance(output, torch.Tensor) and output.dim() > 1 else None
        found[m] = (c_in, c_out)

    handles = [m.register_forward_hook(hook) for m in region.modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            region.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return found
