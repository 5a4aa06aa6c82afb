"""ONNX export, output check and ONNX Runtime sessions for :func:`rtdetr_prune.bench.bench`.

We export with ``torch.onnx.export`` ourselves (fixed batch and image size, TorchScript exporter),
not through Ultralytics' ``Exporter``: that one checks and may pip-install requirements, which must
not happen offline. What Ultralytics' RT-DETR export needs is reproduced here: a fused float model,
eval mode, no gradients, opset >= 16 (GridSample). One difference, on purpose: the decoder keeps
``export=False`` so the graph also returns its raw outputs (final-layer boxes and class logits,
the selected anchors' encoder boxes and logits) and its projected inputs (the output of the last
layers pruning changes), which we compare with PyTorch's (see :func:`check_outputs`); the top-k
detections are a poorer thing to compare, as near-tied scores can swap order between runtimes.
The extra outputs reuse tensors the graph computes anyway.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from rtdetr_prune.bench.timing import Runner
from rtdetr_prune.errors import UserError

OPSET = 17  # RT-DETR's GridSample needs >= 16; 17 is widely supported by ONNX Runtime builds
INPUT = "images"
# detections (timed); raw boxes and logits of the last decoder layer and of the selected anchors (checked);
# then feat0... (the decoder's projected inputs, checked)
OUTPUTS = ("output0", "boxes", "logits", "enc_boxes", "enc_logits")


class OnnxMismatch(UserError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


def output_names(view: nn.Module) -> list[str]:
    """The exported graph's output names: :data:`OUTPUTS`, then ``feat0``... per decoder input level."""
    return [*OUTPUTS, *(f"feat{i}" for i in range(view.levels))]


def export(view: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Export a model's export view (its family's ``export_module`` of the fused model) to ONNX at
    ``x``'s fixed shape and dtype.

    Args:
        view: images in; detections, raw decoder outputs and projected inputs out (see the family's
            export module, e.g. :class:`rtdetr_prune.models.ultralytics.export.RawOutputs`), on ``x``'s device.
        x: example images (B, 3, H, W); batch and size are baked into the graph.
        path: where to write the ``.onnx`` file.
    """
    for p in view.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes: fixed shapes are the point
        torch.onnx.export(view.eval(), (x,), str(path), opset_version=OPSET, input_names=[INPUT],
                          output_names=output_names(view), dynamo=False)
    return path


def session(path: Path, device: torch.device, threads: int, profile_prefix: str | None = None,
            configure: Callable | None = None):
    """An ONNX Runtime session on CPU (``threads`` intra-op threads) or on CUDA.

    With ``profile_prefix``, ONNX Runtime records every node's time; ``sess.end_profiling()`` writes
    them to a JSON file whose name starts with the prefix and returns its path. ``configure`` gets the
    ``SessionOptions`` last, to change what the benchmark's defaults set (spinning, memory arena).

    Raises:
        UserError: CUDA asked for but this onnxruntime build has no CUDAExecutionProvider.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # sequential execution: one op at a time, each on all threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    # Idle threads block instead of spinning: interleaved sessions each own a thread pool, and a
    # spinning pool steals the cores the next model is being timed on.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    if configure is not None:
        configure(opts)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("ONNX Runtime has no CUDAExecutionProvider here (it has "
                            f"{', '.join(ort.get_available_providers())}). Install onnxruntime-gpu, "
                            "or benchmark with --device cpu or --backend torch.")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


@dataclass(frozen=True)
class OutputCheck:
    """How far ONNX Runtime's outputs are from PyTorch's on the check images."""

    max_abs_diff: float  # worst image: projected decoder inputs, and the decoder's outputs where compared
    tied_images: int  # images whose query selection is a tie: compared up to the decoder's inputs only
    images: int


def check_outputs(sess, view: nn.Module, x: torch.Tensor, atol: float) -> OutputCheck:
    """Compare an exported model's outputs with PyTorch's, image by image.

    Compared: the decoder's projected input features (the last layers pruning changes; no top-k
    involved), the anchors the decoder selected (their encoder boxes and logits, as sets), and the
    raw decoder outputs (as sets of queries, :func:`image_diffs`). The decoder keeps the ``num_queries`` anchors with the
    highest encoder scores; where the scores at that boundary are within ``atol`` of each other, the
    two runtimes may keep different anchors and then rightly give different rows. This happens to
    randomly initialized models, pruned ones especially (measured on rtdetr-r18 pruned 3x: about
    1,370 of 8,400 anchors within 1e-4 of the boundary score). An image whose runtimes selected other
    anchors across such a tie is compared up to the decoder's inputs only, and counted; other anchors
    without a tie is a mismatch.

    Args:
        sess: an ONNX Runtime session of ``model`` exported with :func:`export` at ``x``'s shape.
        view: the export view of the fused eval-mode model (what :func:`export` exported).
        x: the images (B, 3, H, W) both were given.
        atol: the tolerance the caller checks against; also the score gap that counts as a tie.
    """
    names = output_names(view)
    got = [torch.from_numpy(a) for a in sess.run(names[1:], {INPUT: x.cpu().numpy()})]
    with torch.inference_mode():
        ref = view(x)[1:]
    feats = [max(_abs_diff(r[i], g[i]) for r, g in zip(ref[4:], got[4:])) for i in range(len(x))]
    chosen = image_diffs(_enc_rows(ref[2], ref[3]), _enc_rows(got[2], got[3]))
    rows = image_diffs(_rows(ref[0], ref[1]), _rows(got[0], got[1]))
    gaps = _boundary_gaps(view.anchor_scores, view.num_queries)
    diffs, tied = [], 0
    for i in range(len(x)):
        if chosen[i] <= atol:  # the same anchors: the decoder's outputs must agree
            diffs.append(max(feats[i], rows[i]))
        elif gaps[i] <= atol:  # other anchors across a tie: the decoder's inputs must agree
            diffs.append(feats[i])
            tied += 1
        else:
            diffs.append(max(feats[i], chosen[i], rows[i]))
    return OutputCheck(max(diffs), tied, len(x))


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return (a - b).abs().max().item() if torch.isfinite(a).all() and torch.isfinite(b).all() else float("inf")


def _boundary_gaps(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per image, the gap between the k-th and (k+1)-th best anchor scores (max over classes); inf when
    every anchor is kept (no boundary)."""
    best = scores.detach().float().amax(-1).cpu()  # (B, anchors)
    if best.shape[1] <= k:
        return torch.full((best.shape[0],), float("inf"))
    top = best.topk(k + 1, dim=1).values
    return top[:, k - 1] - top[:, k]


def image_diffs(ref: torch.Tensor, got: torch.Tensor) -> list[float]:
    """Per image, the worst nearest-row distance between two (B, queries, D) sets, both ways (inf if not finite).

    Queries are compared as a set: each row of one (a query's box and logits) is matched with the
    nearest row of the other (max-norm), both ways. Why: the decoder picks its queries with a top-k
    over encoder scores, and two runtimes may order near-tied queries differently; the decoder is
    order-free over queries, so the same model then gives the same rows in another order. A wrong
    export moves rows away from every reference row.
    """
    diffs = []
    for a, b in zip(ref, got):  # one image at a time: a (queries x queries) distance matrix
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            diffs.append(float("inf"))
            continue
        d = torch.cdist(a[None], b[None], p=float("inf"))[0]
        diffs.append(max(d.min(1).values.max().item(), d.min(0).values.max().item()))
    return diffs


def _enc_rows(boxes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The selected anchors' (B, queries, 4 + nc) rows of encoder box and logits, float64 on CPU."""
    return torch.cat([boxes, logits], -1).detach().cpu().double()


def _rows(boxes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Last decoder layer's (B, queries, 4 + nc) rows of box and logits, float64 on CPU."""
    return torch.cat([boxes[-1], logits[-1]], -1).detach().cpu().double()


def check_close(label: str, diff: float, atol: float) -> None:
    """Refuse to time an ONNX model whose outputs differ from PyTorch's by more than ``atol``.

    Raises:
        OnnxMismatch: naming the model and the difference.
    """
    if not diff <= atol:  # also catches NaN
        raise OnnxMismatch(
            f"ONNX export of '{label}' does not match PyTorch: max abs difference {diff:.3g} on the raw decoder "
            f"outputs (tolerance {atol:.3g}). Its timing would not be of the same model. Benchmark it with "
            "--backend torch, or raise --atol if the difference is acceptable for your use."
        )


def ort_runner(sess, x: torch.Tensor) -> Runner:
    """One forward pass through ONNX Runtime, detections only, returning when the result is ready.

    On CUDA the images stay on the GPU and the output is left there (I/O binding), as PyTorch's
    timing does: no host-device copies are timed.
    """
    if x.device.type != "cuda":
        feed = {INPUT: x.numpy()}
        return lambda: sess.run([OUTPUTS[0]], feed)
    binding = sess.io_binding()
    x = x.contiguous()
    binding.bind_input(INPUT, "cuda", x.device.index or 0, _np_dtype(x), list(x.shape), x.data_ptr())
    binding.bind_output(OUTPUTS[0], "cuda", x.device.index or 0)

    def run(images=x):  # holds the bound tensor, so its GPU memory outlives the binding
        sess.run_with_iobinding(binding)  # synchronous: returns when the GPU work is done

    return run


def _np_dtype(x: torch.Tensor):
    return np.float16 if x.dtype == torch.float16 else np.float32
