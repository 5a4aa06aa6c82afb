"""An Ultralytics RT-DETR as ONNX export sees it: detections plus the raw outputs worth comparing.

:mod:`rtdetr_prune.bench.onnx` exports this module and compares its outputs with PyTorch's; the
contract (the same for every family) is in :class:`RawOutputs`' docstring.
"""

from __future__ import annotations

import torch
from torch import nn


class RawOutputs(nn.Module):
    """An RT-DETR in eval mode with its raw decoder outputs and the decoder's projected inputs exposed.

    Input: images (B, 3, H, W), values in [0, 1]. Output: detections (B, K, 6) as the model gives
    them, final-layer boxes (1, B, queries, 4) in normalized cx, cy, w, h, class logits
    (1, B, queries, nc), the selected anchors' encoder boxes (B, queries, 4) and logits
    (B, queries, nc), then the decoder's projected input features (B, hidden, H_i, W_i), one per level.
    Holds the model (no copy).

    Attributes:
        levels: number of feature levels (projected inputs) after the first five outputs.
        num_queries: anchors the decoder keeps (its top-k over encoder scores).
        anchor_scores: after a forward in PyTorch, the encoder's scores of every anchor (B, anchors, nc),
            from which ties at the top-k boundary are found.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        head = model.model[-1]
        head.export, head.dynamic = False, False  # keep the raw outputs (see the forward)
        self.model = model
        self.levels, self.num_queries = head.nl, head.num_queries
        self.anchor_scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor):
        head, feats = self.model.model[-1], []  # the decoder's input projections' outputs: the last layers pruning changes
        hooks = [m.register_forward_hook(lambda _, i, o: feats.append(o)) for m in head.input_proj]
        hooks.append(head.enc_score_head.register_forward_hook(lambda *args: setattr(self, "anchor_scores", args[-1])))
        try:
            # RT-DETR quirk: in eval mode without export, the decoder returns (detections, raw), where
            # raw = (dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta).
            y, raw = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        return (y, raw[0], raw[1], raw[2], raw[3], *feats)
