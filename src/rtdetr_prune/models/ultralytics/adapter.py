"""Everything that is special about RT-DETR, in one place.

The pruning engine never looks at model classes itself; it asks this adapter:
- which part of the network to trace (:meth:`RTDETRAdapter.region`): the backbone and hybrid
  encoder, up to and including the decoder's input projections. The decoder proper (query
  selection, deformable attention, heads) stays untraced: Torch-Pruning cannot follow its
  token-dimension concat, and its width is the decoder's interface;
- which layers are protected, and why (:meth:`RTDETRAdapter.protected`);
- which channel groups must not be pruned although they trace (:meth:`RTDETRAdapter.group_veto`);
- what to fix up after channels are removed (:meth:`RTDETRAdapter.after_prune`).

To widen the traced region later (into the decoder), change :class:`EncoderRegion`'s outputs and
:meth:`RTDETRAdapter.protected`; nothing else in the engine depends on where the cut is.
The engine finds this class through :class:`~rtdetr_prune.models.ultralytics.UltralyticsFamily`.
"""

from __future__ import annotations

import torch
from torch import nn

from rtdetr_prune.models.family import Adapter, Protected

# One protected-layer reason, shown by `check` and in reports.
DECODER_REASON = (
    "RT-DETR decoder (query selection, deformable attention, heads): kept at full width; only its "
    "input projections' input channels follow the encoder"
)
AIFI_EMBED_REASON = (
    "AIFI embedding width: its 2-D sin-cos position code is computed from the width, so removing any "
    "channel shifts every channel's position code (its feed-forward layer is pruned instead)"
)


class EncoderRegion(nn.Module):
    """The traceable part of an RT-DETR: images in, the decoder's projected inputs out.

    Holds the detection model (no copy), so pruning the region prunes the model.

    Input: images (B, 3, H, W). Output: list of the decoder's ``input_proj`` outputs, one
    (B, hidden, H/s, W/s) map per level s in (8, 16, 32).
    """

    def __init__(self, det: nn.Module):
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        layers, save = self.det.model, set(self.det.save)
        outs: list[torch.Tensor | None] = []
        for m in layers[:-1]:
            if m.f != -1:  # the layer reads earlier outputs, as in Ultralytics' routing
                x = outs[m.f] if isinstance(m.f, int) else [x if j == -1 else outs[j] for j in m.f]
            x = m(x)
            outs.append(x if m.i in save else None)
        decoder = layers[-1]
        feats = [x if j == -1 else outs[j] for j in decoder.f]
        return [proj(f) for proj, f in zip(decoder.input_proj, feats)]


class RTDETRAdapter(Adapter):
    """RT-DETR knowledge for the pruning engine. Holds the model it wraps (no copy)."""

    def __init__(self, model: nn.Module):
        from ultralytics.nn.modules.head import RTDETRDecoder

        super().__init__(model)
        self.decoder = model.model[-1]
        assert isinstance(self.decoder, RTDETRDecoder), "load models through rtdetr_prune.load_model"

    def region(self) -> EncoderRegion:
        """The module to trace; its parameters are the model's own."""
        return EncoderRegion(self.model)

    def region_modules(self):
        """The backbone and encoder layers (everything before the decoder), by name in the model."""
        return [(f"model.{n}", m) for n, m in self.model.model[:-1].named_modules() if n]

    def protected(self) -> list[Protected]:
        """The decoder: its output channels are never pruned (only its input projections' inputs follow)."""
        return [Protected(f"model.{len(self.model.model) - 1}", DECODER_REASON, tuple(self.decoder.modules()), "decoder")]

    def group_veto(self, modules: list[nn.Module]) -> str | None:
        """Reason why a traced group (given the modules whose *output* channels it prunes) must be kept."""
        if any(isinstance(m, nn.MultiheadAttention) for m in modules):
            return AIFI_EMBED_REASON
        return None

    def after_prune(self) -> None:
        """Bring cached channel counts in line with the pruned weights (see :func:`sync_sizes`)."""
        sync_sizes(self.model)

    def display_name(self, region_name: str) -> str:
        """Module name as the user sees it in the detection model ('model.3.conv'), from a region name."""
        return region_name[4:] if region_name.startswith("det.") else region_name


def sync_sizes(model: nn.Module) -> None:
    """Bring cached channel counts in line with the weights.

    Ultralytics' ``RepConv`` stores ``c1``/``c2`` and reads them when it is fused for export; the
    per-layer parameter counts (``np``) feed ``model.info()``'s table.
    """
    from ultralytics.nn.modules.conv import RepConv

    for m in model.modules():
        if isinstance(m, RepConv):
            m.c1, m.c2 = m.conv1.conv.in_channels, m.conv1.conv.out_channels
    for layer in model.model:
        layer.np = sum(p.numel() for p in layer.parameters())
