"""Everything that is special about RT-DETR, in one place.

The pruning engine never looks at model classes itself; it asks this adapter:
- which part of the network to trace (:meth:`RTDETRAdapter.region`): the backbone and hybrid
  encoder, up to and including the decoder's input projections, then the decoder's channel
  connectivity replayed on stand-in tensors (:mod:`~rtdetr_prune.models.ultralytics.decoder`: Torch-Pruning
  cannot follow the decoder's own forward, its token concat, query selection and grid sampling);
- which layers are protected, and why (:meth:`RTDETRAdapter.protected`);
- which channel groups must not be pruned although they trace (:meth:`RTDETRAdapter.group_veto`), which
  optional decoder part a group belongs to (:meth:`RTDETRAdapter.group_part`) and which groups are viewed as
  attention heads (:meth:`RTDETRAdapter.channel_heads`);
- what the zeroed-channel trial compares (:meth:`RTDETRAdapter.trial_outputs`: the decoder's outputs too);
- what to fix up after channels are removed (:meth:`RTDETRAdapter.after_prune`), and how to drop decoder
  layers (:meth:`RTDETRAdapter.keep_decoder_layers`).
The engine finds this class through :class:`~rtdetr_prune.models.ultralytics.UltralyticsFamily`.
"""

from __future__ import annotations

import torch
from torch import nn

from rtdetr_prune.models.family import Adapter, Protected
from rtdetr_prune.models.ultralytics import decoder as dec

AIFI_EMBED_REASON = (
    "AIFI embedding width: its 2-D sin-cos position code is computed from the width, so removing any "
    "channel shifts every channel's position code (its feed-forward layer is pruned instead)"
)


class TracedRegion(nn.Module):
    """The traceable part of an RT-DETR: images in; the decoder's projected inputs, then the decoder's
    channel connectivity (:func:`~rtdetr_prune.models.ultralytics.decoder.decoder_links`) out.

    Holds the detection model (no copy), so pruning the region prunes the model.

    Input: images (B, 3, H, W). Output: list of the decoder's ``input_proj`` outputs, one
    (B, memory width, H/s, W/s) map per level s in (8, 16, 32), then the decoder replay's outputs
    ((B, nc) scores, (B, 4) boxes, sampling offsets and attention weights).
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
        memory = [proj(f) for proj, f in zip(decoder.input_proj, feats)]
        return [*memory, *dec.decoder_links(decoder, memory)]


class RTDETRAdapter(Adapter):
    """RT-DETR knowledge for the pruning engine. Holds the model it wraps (no copy)."""

    def __init__(self, model: nn.Module):
        from ultralytics.nn.modules.head import RTDETRDecoder

        super().__init__(model)
        self.decoder = model.model[-1]
        assert isinstance(self.decoder, RTDETRDecoder), "load models through rtdetr_prune.load_model"

    def region(self) -> TracedRegion:
        """The module to trace; its parameters are the model's own."""
        return TracedRegion(self.model)

    def region_modules(self):
        """The backbone and encoder layers (everything before the decoder), by name in the model."""
        return [(f"model.{n}", m) for n, m in self.model.model[:-1].named_modules() if n]

    def protected(self) -> list[Protected]:
        """The decoder layers whose output widths the task or the sampling layout fixes."""
        return [Protected(f"model.{len(self.model.model) - 1}", dec.FIXED_REASON,
                          tuple(dec.fixed_modules(self.decoder)), "decoder")]

    def group_veto(self, modules: list[nn.Module]) -> str | None:
        """Reason why a traced group (given the modules whose *output* channels it prunes) must be kept."""
        if dec.part_of(self.decoder, modules) == "query":
            return dec.QUERY_REASON
        if any(isinstance(m, nn.MultiheadAttention) for m in modules):
            return AIFI_EMBED_REASON
        return None

    def group_part(self, modules: list[nn.Module]) -> str | None:
        """The optional decoder part (memory, value, ffn, mlp) a group belongs to; None for the encoder's."""
        part = dec.part_of(self.decoder, modules)
        return part if part in dec.PARTS else None

    def channel_heads(self, modules: list[nn.Module]) -> int:
        """``n_heads`` for a deformable attention's value width (every head keeps the same width), else 1."""
        return dec.heads_of(self.decoder, modules)

    def trial_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """What pruning must not change, in eval mode: the decoder replay's outputs, then the decoder's raw
        outputs (boxes and logits of the layer inference reads, the selected anchors' encoder boxes and
        logits). Not the projected inputs themselves: their width (the memory width) may be pruned."""
        memory: list[torch.Tensor] = []
        hooks = [p.register_forward_hook(lambda _, args, y: memory.append(y)) for p in self.decoder.input_proj]
        try:
            raw = self.model.eval()(images)[1]
        finally:
            for h in hooks:
                h.remove()
        return [*dec.decoder_links(self.decoder, memory), *raw[:4]]

    def query_selection(self) -> tuple[nn.Module, int]:
        """The decoder ranks anchors by their best class score (``enc_score_head``) and keeps ``num_queries``."""
        return self.decoder.enc_score_head, self.decoder.num_queries

    def keep_decoder_layers(self, k: int) -> int:
        """Keep the first ``k`` decoder layers (see :func:`~rtdetr_prune.models.ultralytics.decoder.keep_layers`)."""
        removed = dec.keep_layers(self.model, k)
        sync_sizes(self.model)
        return removed

    def decoder_layers(self) -> int:
        return len(self.decoder.decoder.layers)

    def after_prune(self) -> None:
        """Bring cached channel counts in line with the pruned weights (see :func:`sync_sizes`)."""
        sync_sizes(self.model)

    def fused_aliases(self) -> dict[str, str]:
        """Fusing a ``RepConv`` folds its 1x1 branch into the 3x3 one as a new ``conv``, as wide as ``conv1``."""
        from ultralytics.nn.modules.conv import RepConv

        return {f"{n}.conv": f"{n}.conv1.conv" for n, m in self.model.named_modules() if isinstance(m, RepConv)}

    def display_name(self, region_name: str) -> str:
        """Module name as the user sees it in the detection model ('model.3.conv'), from a region name."""
        return region_name[4:] if region_name.startswith("det.") else region_name


def sync_sizes(model: nn.Module) -> None:
    """Bring cached channel counts in line with the weights.

    Ultralytics' ``RepConv`` stores ``c1``/``c2`` and reads them when it is fused for export; the
    decoder's deformable attention reads its value width from ``d_model``; the per-layer parameter counts
    (``np``) feed ``model.info()``'s table.
    """
    from ultralytics.nn.modules.conv import RepConv

    for m in model.modules():
        if isinstance(m, RepConv):
            m.c1, m.c2 = m.conv1.conv.in_channels, m.conv1.conv.out_channels
    dec.sync_decoder(model.model[-1])
    for layer in model.model:
        layer.np = sum(p.numel() for p in layer.parameters())
