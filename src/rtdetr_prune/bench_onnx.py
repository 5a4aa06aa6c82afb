"""ONNX export, output check and ONNX Runtime sessions for :func:`rtdetr_prune.bench.bench`.

We export with ``torch.onnx.export`` ourselves (fixed batch and image size, TorchScript exporter),
not through Ultralytics' ``Exporter``: that one checks and may pip-install requirements, which must
not happen offline. What Ultralytics' RT-DETR export needs is reproduced here: a fused float model,
eval mode, no gradients, opset >= 16 (GridSample). One difference, on purpose: the decoder keeps
``export=False`` so the graph also returns its raw outputs (final-layer boxes and class logits),
which we compare with PyTorch's (as sets of queries, see :func:`max_abs_diff`); the top-k
detections are a poorer thing to compare, as near-tied scores can swap order between runtimes.
The extra outputs reuse tensors the graph computes anyway.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtdetr_prune.bench_timing import Runner
from rtdetr_prune.errors import UserError

OPSET = 17  # RT-DETR's GridSample needs >= 16; 17 is widely supported by ONNX Runtime builds
INPUT = "images"
OUTPUTS = ("output0", "boxes", "logits")  # detections (timed), raw boxes and logits (checked)


class OnnxMismatch(UserError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


class RawOutputs(nn.Module):
    """An RT-DETR in eval mode with its raw decoder outputs exposed.

    Input: images (B, 3, H, W), values in [0, 1]. Output: detections (B, K, 6) as the model gives
    them, final-layer boxes (1, B, queries, 4) in normalized cx, cy, w, h, and class logits
    (1, B, queries, nc). Holds the model (no copy).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        # RT-DETR quirk: in eval mode without export, the decoder returns (detections, raw), where
        # raw = (dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta).
        y, raw = self.model(x)
        return y, raw[0], raw[1]


def export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Export a fused eval-mode RT-DETR to ONNX at ``x``'s fixed shape and dtype.

    Args:
        model: the fused model, on ``x``'s device.
        x: example images (B, 3, H, W); batch and size are baked into the graph.
        path: where to write the ``.onnx`` file.
    """
    head = model.model[-1]
    head.export, head.dynamic = False, False  # see the module docstring: keep raw outputs
    for p in model.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes: fixed shapes are the point
        torch.onnx.export(RawOutputs(model).eval(), (x,), str(path), opset_version=OPSET, input_names=[INPUT],
                          output_names=list(OUTPUTS), dynamo=False)
    return path


def session(path: Path, device: torch.device, threads: int):
    """An ONNX Runtime session on CPU (``threads`` intra-op threads) or on CUDA.

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
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("ONNX Runtime has no CUDAExecutionProvider here (it has "
                            f"{', '.join(ort.get_available_providers())}). Install onnxruntime-gpu, "
                            "or benchmark with --device cpu or --backend torch.")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def max_abs_diff(sess, x: torch.Tensor, reference: tuple[torch.Tensor, ...]) -> float:
    """Largest absolute difference between the session's raw outputs and PyTorch's on ``x``, per query.

    Queries are compared as a set: each query of one (its box and logits, one row) is matched with
    the nearest query of the other, both ways, and the worst match is returned. Why: the decoder
    picks its queries with a top-k over encoder scores, and two runtimes may order near-tied
    queries differently; the decoder is order-free over queries, so the same model then gives the
    same rows in another order. A wrong export moves rows away from every PyTorch row.

    Args:
        sess: an ONNX Runtime session of a :func:`export`-ed model.
        x: the images both were given.
        reference: PyTorch's ``RawOutputs`` result on ``x``.
    """
    boxes, logits = sess.run(list(OUTPUTS[1:]), {INPUT: x.cpu().numpy()})
    got = _rows(torch.from_numpy(boxes), torch.from_numpy(logits))
    ref = _rows(reference[1], reference[2])
    if not (torch.isfinite(got).all() and torch.isfinite(ref).all()):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref, got):  # one image at a time: a (queries x queries) distance matrix
        d = torch.cdist(a[None], b[None], p=float("inf"))[0]
        worst = max(worst, d.min(1).values.max().item(), d.min(0).values.max().item())
    return worst


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
