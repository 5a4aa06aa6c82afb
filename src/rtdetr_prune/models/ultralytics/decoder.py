"""The RT-DETR decoder's channel structure, for pruning: which of its widths can shrink, and how.

Torch-Pruning cannot follow the decoder's own forward (token concat, top-k query selection, grid sampling of
values viewed as heads), so :func:`decoder_links` replays only its *channel connectivity*: each layer is called
in the order and with the couplings the real forward has (the same layers, so pruning them prunes the model),
on small stand-in tensors (one token per image). What it reproduces, per real forward:

- **memory width** (part ``memory``): the input projections' outputs (all levels share it: the decoder
  concatenates them along tokens) feed ``enc_output`` and every layer's ``cross_attn.value_proj`` and
  nothing else. The levels are averaged over pixels and summed here, which couples the same channel of every
  level, as the concat does.
- **value width** (part ``value``): ``value_proj`` out -> grid sampling per head (channel by channel) ->
  ``output_proj`` in. Its channels are viewed as ``n_heads`` x head width, so every head must keep the same
  width (:data:`HEADS`); ``MSDeformAttn`` reads that width from its ``d_model`` attribute, the only place it
  uses it, so :func:`sync_decoder` sets ``d_model`` to the value width after pruning.
- **FFN hidden width** (part ``ffn``): ``linear1`` out -> activation -> ``linear2`` in.
- **MLP hidden widths** (part ``mlp``): the hidden layers of ``enc_bbox_head``, every ``dec_bbox_head`` and
  ``query_pos_head`` (each hidden layer's outputs -> activation -> the next layer's inputs).
- **query width** (the decoder's hidden width proper): ``enc_output``, every norm, self-attention, the
  outputs of ``output_proj`` and ``linear2``, the heads' inputs. Traced so that `check` can show what it
  holds, but vetoed (:data:`QUERY_REASON`): LayerNorms normalize over it and self-attention scales by
  1/sqrt(head width), so removing channels, even all-zero ones, changes every query.

Layers whose outputs are fixed by the task or the sampling layout (class and box heads' last layers, sampling
offsets and attention weights) are protected. ``--decoder-layers K`` (:func:`keep_layers`) keeps the first K
decoder layers and their heads, as RT-DETR's own ``eval_idx`` does for inference.
"""

from __future__ import annotations

import torch
from torch import nn

from rtdetr_prune.errors import UserError

PARTS = ("memory", "value", "ffn", "mlp")  # the decoder's optional parts (recipe: --decoder-parts)
QUERY_REASON = (
    "decoder query width (enc_output, norms, self-attention, the heads' inputs): LayerNorms normalize over it and "
    "self-attention scales by 1/sqrt(head width), so removing any channel, even an all-zero one, changes every "
    "query; the memory, value, FFN and MLP widths around it are pruned instead"
)
FIXED_REASON = (
    "decoder outputs fixed by the task or the sampling layout (classes, box coordinates, sampling offsets and "
    "attention weights per head, level and point)"
)


def decoder_links(head: nn.Module, memory: list[torch.Tensor]) -> list[torch.Tensor]:
    """Replay the channel connectivity of an ``RTDETRDecoder`` (see the module docstring).

    Args:
        head: the decoder (its own layers are called).
        memory: its input projections' outputs, (B, memory width, H_l, W_l) per level.

    Returns:
        Every head output, (B, nc) class scores and (B, 4) boxes, plus sampling offsets and attention
        weights per layer: tensors whose width is fixed, for the tracer to end at.
    """
    mem = torch.stack([m.mean((2, 3)) for m in memory]).sum(0)  # (B, memory width), levels coupled
    query = head.enc_output(mem)  # (B, query width)
    box = head.enc_bbox_head(query)  # (B, 4)
    outs = [head.enc_score_head(query), box]
    for i, layer in enumerate(head.decoder.layers):
        pos = head.query_pos_head(box)  # (B, query width), from the reference boxes
        seq = (query + pos).unsqueeze(0)  # (1 token, B, width): MultiheadAttention is not batch-first
        query = layer.norm1(query + layer.self_attn(seq, seq, query.unsqueeze(0))[0].squeeze(0))
        attn = layer.cross_attn
        outs += [attn.sampling_offsets(query + pos), attn.attention_weights(query + pos)]
        query = layer.norm2(query + attn.output_proj(attn.value_proj(mem)))  # value channels one-to-one
        query = layer.forward_ffn(query)
        box = box + head.dec_bbox_head[i](query)
        outs += [head.dec_score_head[i](query), box]
    return outs


def fixed_modules(head: nn.Module) -> list[nn.Module]:
    """Decoder layers whose output width is fixed (see :data:`FIXED_REASON`), plus every module the replay does
    not reach (kept whole: nothing traced couples them)."""
    fixed = [head.enc_score_head, head.enc_bbox_head.layers[-1], *head.dec_score_head]
    fixed += [mlp.layers[-1] for mlp in head.dec_bbox_head]
    fixed += [m for layer in head.decoder.layers for m in (layer.cross_attn.sampling_offsets,
                                                           layer.cross_attn.attention_weights)]
    fixed += [head.denoising_class_embed] + ([head.tgt_embed] if getattr(head, "learnt_init_query", False) else [])
    return fixed


def part_of(head: nn.Module, modules: list[nn.Module]) -> str | None:
    """The decoder part (one of :data:`PARTS`) whose channels a group removes, given the modules whose *output*
    channels it removes; "query" for the query width; None for a group outside the decoder."""
    out = {id(m) for m in modules}
    if any(id(p[0]) in out for p in head.input_proj):
        return "memory"
    if id(head.enc_output[0]) in out:
        return "query"
    for layer in head.decoder.layers:
        if id(layer.cross_attn.value_proj) in out:
            return "value"
        if id(layer.linear1) in out:
            return "ffn"
    for mlp in (head.enc_bbox_head, head.query_pos_head, *head.dec_bbox_head):
        if any(id(lin) in out for lin in mlp.layers[:-1]):
            return "mlp"
    return None


def heads_of(head: nn.Module, modules: list[nn.Module]) -> int:
    """Heads a group's channels are viewed as (``n_heads`` for a value width, else 1)."""
    out = {id(m) for m in modules}
    for layer in head.decoder.layers:
        if id(layer.cross_attn.value_proj) in out:
            return int(layer.cross_attn.n_heads)
    return 1


def sync_decoder(head: nn.Module) -> None:
    """Cached sizes the decoder's forward reads: each ``MSDeformAttn``'s ``d_model`` is its value width (it
    views values as ``n_heads`` x ``d_model // n_heads``; nothing else reads it)."""
    for layer in head.decoder.layers:
        attn = layer.cross_attn
        width = attn.value_proj.out_features
        assert width % attn.n_heads == 0, f"value width {width} is not split evenly over {attn.n_heads} heads"
        attn.d_model = width


DECODER_ARGS = (256, 300, 4, 8, 6)  # RTDETRDecoder's defaults for hd, nq, ndp, nh, ndl (YAML args 1-5)


def keep_layers(model: nn.Module, k: int) -> int:
    """Keep the first ``k`` decoder layers of ``model`` (in place) and their heads; inference then reads layer
    ``k - 1``'s output, as RT-DETR's ``eval_idx`` does. The model's YAML records ``k``, so the safe format
    rebuilds it. Returns the number of layers removed.

    Raises:
        UserError: ``k`` is not between 1 and the decoder's layer count.
    """
    head = model.model[-1]
    n = len(head.decoder.layers)
    if not 1 <= k <= n:
        raise UserError(f"--decoder-layers {k}: this model's decoder has {n} layers; give 1 to {n} (0 keeps all).")
    if k == n and head.decoder.eval_idx == n - 1:
        return 0
    head.decoder.layers = head.decoder.layers[:k]
    head.dec_score_head, head.dec_bbox_head = head.dec_score_head[:k], head.dec_bbox_head[:k]
    head.num_decoder_layers = head.decoder.num_layers = k
    head.decoder.eval_idx = k - 1
    _yaml_layers(model, k)
    return n - k


def _yaml_layers(model: nn.Module, k: int) -> None:
    """Write ``k`` decoder layers (and the last one as the inference layer) into the model's YAML."""
    spec = getattr(model, "yaml", None)
    if not isinstance(spec, dict) or not spec.get("head"):
        return
    entry = spec["head"][-1]
    args = list(entry[3])
    args += list(DECODER_ARGS[len(args) - 1:]) if len(args) < 6 else []
    args[5] = k
    if len(args) > 9:
        args[9] = -1  # eval_idx: the last kept layer
    spec["head"][-1] = [*entry[:3], args, *entry[4:]]
