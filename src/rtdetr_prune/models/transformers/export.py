"""A transformers RT-DETR as ONNX export sees it: detections plus the raw outputs worth comparing.

:mod:`rtdetr_prune.bench.onnx` exports this module and compares its outputs with PyTorch's; the contract
(the same for every family) is in :meth:`rtdetr_prune.models.family.ModelFamily.export_module`.
"""

from __future__ import annotations

import torch
from torch import nn

from rtdetr_prune.models.transformers.view import detections


class RawOutputs(nn.Module):
    """A transformers RT-DETR in eval mode with its raw decoder outputs and the decoder's projected inputs exposed.

    Input: images (B, 3, H, W), values in [0, 1] (transformers' RT-DETR image processor only rescales).
    Output: detections (B, queries, 6) (:func:`~rtdetr_prune.models.transformers.view.detections`), the last
    decoder layer's boxes (1, B, queries, 4) in normalized cx, cy, w, h and class logits (1, B, queries, nc),
    the selected anchors' encoder boxes (B, queries, 4) and logits (B, queries, nc), then the decoder's
    projected inputs (B, d_model, H_i, W_i), one per level. Holds the model (no copy).

    Attributes:
        levels: number of feature levels (projected inputs) after the first five outputs.
        num_queries: anchors the decoder keeps (its top-k over encoder scores).
        anchor_scores: after a forward in PyTorch, the encoder's scores of every anchor (B, anchors, nc).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.levels, self.num_queries = model.config.num_feature_levels, model.config.num_queries
        self.anchor_scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor):
        core, feats = self.model.model, []  # the decoder's input projections' outputs: the last layers pruning changes
        hooks = [m.register_forward_hook(lambda _, i, o: feats.append(o)) for m in core.decoder_input_proj]
        hooks.append(core.enc_score_head.register_forward_hook(lambda *args: setattr(self, "anchor_scores", args[-1])))
        try:
            out = self.model(pixel_values=x)
        finally:
            for hook in hooks:
                hook.remove()
        det = detections(out.pred_boxes, out.logits)
        return (det, out.pred_boxes[None], out.logits[None], out.enc_topk_bboxes, out.enc_topk_logits, *feats)
