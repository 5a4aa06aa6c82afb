"""What the pruning engine needs to know about a transformers RT-DETR (v1 or v2), in one place.

- What to trace (:class:`EncoderRegion`): the backbone, the encoder's input projections and the hybrid
  encoder (AIFI, FPN, PAN), up to and including the decoder's input projections, exactly as
  ``RTDetrModel.forward`` chains them. The decoder proper (query selection, deformable attention, heads)
  is not traced and keeps its width, as in the Ultralytics family.
- AIFI's attention heads are prunable here: transformers computes q, k and v with separate linears and
  splits them into heads of a fixed ``head_dim`` (``view(..., -1, head_dim)``). Torch-Pruning couples the
  q, k and v rows and the output projection's columns into one channel group; removing whole heads from
  it (aligned blocks of ``head_dim`` channels, :meth:`TransformersAdapter.channel_block`) leaves fewer
  heads of the same size and scale, which the attention handles as it is. Any other cut would regroup
  channels into heads, so the engine only ever removes whole heads.
- AIFI's embedding width stays (as in Ultralytics' AIFI): its 2-D sin-cos position code is computed from
  the width (``encoder_hidden_dim``), and the layer reshapes its output to that cached width.
"""

from __future__ import annotations

import torch
from torch import nn

from rtdetr_prune.models.family import Adapter, Protected

DECODER_REASON = (
    "RT-DETR decoder (query selection, deformable attention, heads) and its input projections: kept at full "
    "width; only the input projections' input channels follow the encoder"
)
AIFI_EMBED_REASON = (
    "AIFI embedding width: its 2-D sin-cos position code is computed from the width (encoder_hidden_dim), so "
    "removing any channel shifts every channel's position code (its heads and feed-forward layer are pruned instead)"
)


class EncoderRegion(nn.Module):
    """The traceable part of a transformers RT-DETR: images in, the decoder's projected inputs out.

    Holds the detection model (no copy), so pruning the region prunes the model.

    Input: images (B, 3, H, W). Output: list of the decoder's ``decoder_input_proj`` outputs, one
    (B, d_model, H/s, W/s) map per feature level.
    """

    def __init__(self, det: nn.Module):
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.det.model
        feats = m.backbone.model(x).feature_maps  # RTDetrConvEncoder's own call, without the (unused) pixel mask
        proj = [p(f) for p, f in zip(m.encoder_input_proj, feats)]
        return decoder_inputs(m, m.encoder(proj).last_hidden_state)


def decoder_inputs(m: nn.Module, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The decoder's projected inputs from the encoder's output maps, as ``RTDetrModel.forward`` makes them
    (levels beyond the encoder's come from its last map)."""
    sources = [m.decoder_input_proj[level](source) for level, source in enumerate(maps)]
    for level in range(len(sources), m.config.num_feature_levels):
        sources.append(m.decoder_input_proj[level](maps[-1]))
    return sources


class TransformersAdapter(Adapter):
    """RT-DETR knowledge for the pruning engine, for ``RTDetrForObjectDetection`` and its v2. Holds the model."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.core = model.model  # RTDetrModel / RTDetrV2Model
        self.layers = [layer for aifi in self.core.encoder.aifi for layer in aifi.layers]  # AIFI encoder layers

    def region(self) -> EncoderRegion:
        """The module to trace; its parameters are the model's own."""
        return EncoderRegion(self.model)

    def region_modules(self):
        """Backbone, encoder input projections, hybrid encoder and decoder input projections, by name in the model."""
        parts = ("backbone", "encoder_input_proj", "encoder", "decoder_input_proj")
        return [(f"model.{part}.{n}" if n else f"model.{part}", m)
                for part in parts for n, m in getattr(self.core, part).named_modules()]

    def protected(self) -> list[Protected]:
        """The decoder side: the decoder's input projections (outputs kept), query selection, decoder and heads."""
        core = self.core
        parts = [core.decoder_input_proj, core.enc_output, core.enc_score_head, core.enc_bbox_head, core.decoder]
        parts += [getattr(core, n) for n in ("denoising_class_embed", "weight_embedding") if hasattr(core, n)]
        return [Protected("model.decoder", DECODER_REASON, tuple(m for p in parts for m in p.modules()), "decoder")]

    def group_veto(self, modules: list[nn.Module]) -> str | None:
        """AIFI's embedding width (the group that reaches its output projection, feed-forward output and norms)."""
        width = {m for layer in self.layers
                 for m in (layer.self_attn.o_proj, layer.mlp.fc2, layer.self_attn_layer_norm, layer.final_layer_norm)}
        return AIFI_EMBED_REASON if any(m in width for m in modules) else None

    def trial_imgsz(self, imgsz: int) -> int:
        """The smallest multiple of 32 from ``imgsz`` on with as many anchors as the decoder selects queries:
        transformers' query selection is a plain top-k (128 px for 300 queries at strides 8, 16, 32)."""
        config = self.model.config
        size = max(32, imgsz)
        while sum((size // s) ** 2 for s in config.feat_strides) < config.num_queries:
            size += 32
        return size

    def channel_block(self, modules: list[nn.Module]) -> int:
        """``head_dim`` for the group of an AIFI attention's q/k/v rows (whole heads only), else 1."""
        for layer in self.layers:
            attn = layer.self_attn
            if any(m in (attn.q_proj, attn.k_proj, attn.v_proj) for m in modules):
                return int(attn.head_dim)
        return 1

    def display_name(self, region_name: str) -> str:
        """Module name in the detection model ('model.encoder.fpn_blocks.0.conv1.conv'), from a region name."""
        return region_name[4:] if region_name.startswith("det.") else region_name

    def heads(self) -> list[int]:
        """Attention heads left in each AIFI layer (q rows / head_dim), for reports and tests."""
        return [layer.self_attn.q_proj.out_features // layer.self_attn.head_dim for layer in self.layers]
