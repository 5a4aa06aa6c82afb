"""Peers for the accuracy benchmark: other tools pruning the same baseline to the same GFLOPs, as users run them.

- :func:`torch_pruning_magnitude`: plain Torch-Pruning as people write it by hand for RT-DETR (the LRS-DETR
  code, Torch-Pruning's own YOLOv8 example): ``tp.pruner.MetaPruner`` with its magnitude importance
  (``MagnitudeImportance(p=2)``) over the region rtdetr-prune prunes with ``--decoder-parts none`` (backbone
  and encoder up to the decoder's input projections, :class:`EncoderOnly`), the decoder's input projections
  and AIFI's attention in ``ignored_layers``, ``iterative_steps`` small steps, stopping
  at the first step that reaches the target (the YOLOv8 example's loop). Its other settings are its defaults
  (per-layer pruning, no channel rounding).
- :func:`modelopt_fastnas`: NVIDIA Model Optimizer's FastNAS (``modelopt.torch.prune.prune(mode="fastnas")``)
  with a FLOPs constraint, BatchNorm calibration on training batches and mAP50-95 on val images as the
  score. It cannot trace Ultralytics' RT-DETR as a whole (:data:`FASTNAS_WHOLE_MODEL`); it is run on the same
  traced region as ours, whose convs it can search. Its settings are its defaults, except the channel
  divisor, which is set to our ``round_to`` when its default (32) leaves no subnet at the target. The score
  is taken on an exported copy of each candidate subnet (:func:`_static`): Ultralytics' validator fuses
  Conv+BN in place, which corrupts FastNAS's live dynamic modules (an IndexError in its search otherwise).

Both return the pruned model and a record (achieved GFLOPs, wall seconds, what was changed from defaults).
Neither peer is installed with rtdetr-prune: ``pip install nvidia-modelopt torchprofile==0.0.4``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.measure.counts import params_and_gflops
from rtdetr_prune.models import adapter_of, family_of

# What stops FastNAS on the whole Ultralytics RT-DETR (modelopt 0.47): its graph analysis fails inside its
# handler for Ultralytics' Concat module, whose forward takes a list of tensors.
FASTNAS_WHOLE_MODEL = ("modelopt's symbolic tracer fails on Ultralytics' RTDETRDetectionModel: "
                       "TypeError: 'Node' object is not iterable, raised in modelopt/torch/trace/modules/concat.py "
                       "(_get_root_nodes) while analysing Ultralytics' Concat layer, whose forward takes a list")


class EncoderOnly(nn.Module):
    """Images (B, 3, H, W) in; the decoder's projected inputs out, one (B, hidden, H/s, W/s) map per level. Holds
    the detection model (no copy): pruning this prunes the model. What both peers search and prune."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        layers, save, outs = self.det.model, set(self.det.save), []
        for m in layers[:-1]:
            if m.f != -1:  # Ultralytics' routing
                x = outs[m.f] if isinstance(m.f, int) else [x if j == -1 else outs[j] for j in m.f]
            x = m(x)
            outs.append(x if m.i in save else None)
        decoder = layers[-1]
        return [proj(x if j == -1 else outs[j]) for proj, j in zip(decoder.input_proj, decoder.f)]


def _ignored(model: nn.Module) -> list[nn.Module]:
    """What a hand-written Torch-Pruning script leaves alone: the decoder (its width is RT-DETR's interface, so
    its input projections keep their outputs) and AIFI's attention (its sin-cos position code is built from the
    embedding width; pruning it crashes or corrupts the model)."""
    decoder = model.model[-1]
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return [*decoder.input_proj, *attention]


def torch_pruning_magnitude(model: nn.Module, speed_up: float, imgsz: int, steps: int = 100,
                            max_ratio: float = 0.9) -> tuple[nn.Module, dict]:
    """Prune a copy of ``model`` with Torch-Pruning's MetaPruner and magnitude importance until ``speed_up``.

    The pruner removes ``max_ratio`` of each layer's channels in ``steps`` equal steps at most; the loop stops at
    the first step whose GFLOPs (our counter, on the fused model) reach ``base / speed_up``.
    """
    import torch_pruning as tp

    t0 = time.perf_counter()
    model = copy.deepcopy(model).eval().requires_grad_(True)
    base = params_and_gflops(model, imgsz)[1]
    region = EncoderOnly(model)
    pruner = tp.pruner.MetaPruner(region, torch.zeros(1, 3, imgsz, imgsz),
                                  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=max_ratio,
                                  iterative_steps=steps, ignored_layers=_ignored(model))
    gflops, taken = base, 0
    for taken in range(1, steps + 1):
        pruner.step()
        adapter_of(model).after_prune()
        gflops = params_and_gflops(model, imgsz)[1]
        if base / gflops >= speed_up:
            break
    info = {"peer": "torch_pruning_magnitude", "steps": taken, "speed_up": base / gflops, "gflops": gflops,
            "seconds": time.perf_counter() - t0,
            "settings": f"MetaPruner(MagnitudeImportance(p=2), pruning_ratio={max_ratio}, iterative_steps={steps}), "
                        "ignored: decoder input projections, AIFI attention; defaults otherwise (round_to=None)"}
    return model.eval(), info


def modelopt_fastnas(model: nn.Module, speed_up: float, imgsz: int, calib: list[torch.Tensor], score, workdir,
                     divisor: int | None = None, tries: int = 3, tolerance: float = 0.03) -> tuple[nn.Module, dict]:
    """Prune a copy of ``model`` with ModelOpt FastNAS to ``speed_up`` fewer GFLOPs (whole model, our counter).

    FastNAS constrains the FLOPs of what it searches (the traced region), counted its own way (unfused
    branches). The first constraint assumes its count of the region scales with ours; if the result lands
    outside ``[speed_up, speed_up * (1 + tolerance)]``, the constraint is corrected by the ratio of the two
    and the search rerun (its pre-search statistics are kept in ``workdir``, so a rerun only searches).

    Args:
        calib: image batches (B, 3, imgsz, imgsz) in [0, 1] for FastNAS's BatchNorm calibration.
        score: ``score(detection_model) -> float`` (higher is better), FastNAS's ``score_func``.
        workdir: folder for FastNAS's search checkpoint.
        divisor: channel divisor of its conv search space (None: its default, 32).

    Raises:
        ImportError: nvidia-modelopt is not installed.
        ValueError: FastNAS's own error when no subnet meets the constraint.
    """
    import modelopt.torch.prune as mtp
    from modelopt.torch.nas.utils import inference_flops

    t0 = time.perf_counter()
    model = copy.deepcopy(model).eval()
    base = params_and_gflops(model, imgsz)[1]
    ours = _region_share(model, imgsz) * base  # the region's GFLOPs, our counter
    keep = target = (ours - (base - base / speed_up)) / ours  # share of the region's GFLOPs to keep
    if keep <= 0:
        raise ValueError(f"the region holds {ours / base:.0%} of the GFLOPs: {speed_up:g}x is out of its reach")
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    theirs = float(inference_flops(EncoderOnly(model), dummy_input=dummy, unit=1.0))
    mode = "fastnas" if divisor is None else [("fastnas", {"nn.Conv2d": {"*": {"channel_divisor": divisor}},
                                                           "nn.BatchNorm2d": {}})]
    checkpoint = str(Path(workdir) / "fastnas_search.pth")
    history = []
    for _ in range(tries):
        trial = copy.deepcopy(model)
        config = {"data_loader": [(x,) for x in calib], "score_func": lambda region: score(_static(region).det),
                  "checkpoint": checkpoint, "max_iter_data_loader": len(calib)}
        region, _ = mtp.prune(EncoderOnly(trial), mode=mode, constraints={"flops": keep * theirs},
                              dummy_input=dummy, config=config)
        pruned = region.det
        adapter_of(pruned).after_prune()
        gflops = params_and_gflops(pruned, imgsz)[1]
        history.append({"keep": round(keep, 4), "speed_up": round(base / gflops, 4)})
        if speed_up <= base / gflops <= speed_up * (1 + tolerance):
            break
        kept = (gflops - (base - ours)) / ours  # the share of the region it kept, our counter
        keep *= target / max(kept, 1e-6)
    info = {"peer": "modelopt_fastnas", "speed_up": base / gflops, "gflops": gflops, "tries": history,
            "seconds": time.perf_counter() - t0,
            "settings": "mtp.prune(mode='fastnas', constraints={'flops': ...}) on the traced region, BatchNorm "
                        f"calibration on {len(calib)} training batches, score_func = mAP50-95 on val images (of an "
                        "exported copy of each subnet)"
                        + ("" if divisor is None else f", channel_divisor={divisor} (its default 32 cannot reach it)")}
    return pruned.eval(), info


def _static(region: nn.Module) -> nn.Module:
    """A plain copy of the subnet FastNAS has active (``modelopt.torch.nas.export`` of a copy), for its score.

    During the search FastNAS hands ``score_func`` its live search model: dynamic modules whose channels it has
    sorted by importance, each slicing its full weight with an index list on every read. Ultralytics' validator
    fuses Conv+BN in place (``fuse_conv_and_bn`` assigns ``conv.weight``); on a dynamic conv that stores the
    already sliced weight in the full one's place, and the next forward indexes it again with the full-width
    index list: ``IndexError: index 15 is out of bounds for dimension 0 with size 8``. Exported, the copy holds
    ordinary ``nn.Conv2d``/``nn.BatchNorm2d`` at the active widths, which fuse as Ultralytics expects.
    """
    import modelopt.torch.nas as mtn

    return mtn.export(copy.deepcopy(region))


def _region_share(model: nn.Module, imgsz: int) -> float:
    """Share of the whole model's GFLOPs spent inside the traced region (family's per-layer count)."""
    family = family_of(model)
    fused = family.fused(model)
    per_layer = family.layer_gflops(fused, imgsz)
    decoder = f"model.{len(model.model) - 1}."
    proj = decoder + "input_proj."
    inside = sum(g for name, g in per_layer.items() if not name.startswith(decoder) or name.startswith(proj))
    return inside / sum(per_layer.values())
