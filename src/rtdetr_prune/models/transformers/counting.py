"""Params and GFLOPs of a transformers RT-DETR, counted the way the Ultralytics family counts them.

The convention, the same for both families so their tables compare:

- on the *fused* model: every BatchNorm that follows a conv is folded into it (:func:`fused`), so its
  parameters and work are not counted twice; the frozen BatchNorms of transformers' backbone are
  ordinary BatchNorms by the time a model reaches us (:func:`~.zoo.thaw_batchnorms`) and fold the same way;
- GFLOPs = 2 x the multiply-adds THOP (Ultralytics' counter, ``thop.profile``) finds for one
  ``imgsz`` x ``imgsz`` image: every conv and linear layer, LayerNorms, and the products an attention runs
  functionally (q.k and attention.v of scaled dot-product attention, matmuls). Not counted: elementwise
  activations, interpolation, and the deformable attention's bilinear sampling, which THOP has no rule for.

THOP is run on a few small stride-aligned images and extrapolated exactly (its ``stride`` option), as
Ultralytics does; the images are made wide enough that the decoder can select all its queries.

Example:
    >>> params, gflops = count(model, imgsz=640)
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Module class name -> (conv attribute, norm attribute) for the conv + BatchNorm layers of transformers'
# RT-DETR code (backbone, shortcuts, encoder); nn.Sequential(conv, bn) pairs are found by position.
CONV_NORM = {
    "RTDetrResNetConvLayer": ("convolution", "normalization"),
    "RTDetrResNetShortCut": ("convolution", "normalization"),
    "RTDetrConvNormLayer": ("conv", "norm"),
    "RTDetrV2ConvNormLayer": ("conv", "norm"),
    "HGNetV2ConvLayer": ("convolution", "normalization"),
}


def fused(model: nn.Module) -> nn.Module:
    """An inference copy (float32, eval) with each BatchNorm folded into the conv before it; ``model`` unchanged.

    Folded convs keep their names (the BatchNorm becomes an ``nn.Identity``), so a layer of the copy is
    found under the same name as in the model.
    """
    m = copy.deepcopy(model).float().eval()
    for parent in m.modules():
        for conv_name, bn_name in _conv_norm_pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
    return m


def _conv_norm_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    if isinstance(parent, nn.Sequential):
        names = list(parent._modules)
        return [(a, b) for a, b in zip(names, names[1:]) if _foldable(parent._modules[a], parent._modules[b])]
    pair = CONV_NORM.get(type(parent).__name__)
    if pair and _foldable(getattr(parent, pair[0], None), getattr(parent, pair[1], None)):
        return [pair]
    return []


def _foldable(conv, bn) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels)


def count(model: nn.Module, imgsz: int) -> tuple[int, float]:
    """(parameters, GFLOPs) of the fused model for one ``imgsz`` x ``imgsz`` image (see the module docstring).

    Raises:
        RuntimeError: THOP failed on the model (a count of 0 is refused, not reported).
    """
    import thop

    f = fused(model)
    image = torch.zeros(1, 3, imgsz, imgsz, device=next(f.parameters()).device)
    try:
        macs = thop.profile(f, inputs=[image], verbose=False, stride=32, min_cells=min_cells(model))[0]
    except Exception as e:  # noqa: BLE001 - any failure means there is no count to report
        raise RuntimeError(f"THOP could not count this model at imgsz={imgsz} ({type(e).__name__}: {e}). "
                           "Check that the model runs on a zero image of that size.") from e
    if not macs or macs <= 0:
        raise RuntimeError(f"THOP counted {macs} operations for this model at imgsz={imgsz}.")
    return sum(p.numel() for p in f.parameters()), 2.0 * float(macs) / 1e9


def min_cells(model: nn.Module) -> int:
    """Width, in 32-pixel cells, of THOP's smallest proxy image: enough anchors for the decoder's top-k.

    A 32 x 32 cell holds one anchor per level at stride 32, four at 16, sixteen at 8.
    """
    config = model.config
    per_cell = sum((32 // s) ** 2 for s in config.feat_strides if s <= 32) or 1
    return max(1, math.ceil(config.num_queries / per_cell))
