"""Per-layer time on the user's device and runtime: the cost table behind ``--latency-aware`` ranking.

For every conv and linear layer of the fused model (what pruning shrinks), the milliseconds it takes in one
forward pass of a batch, median over a few passes:

- ``torch``: forward hooks around each layer (CUDA synchronized before and after it);
- ``onnxruntime``: ONNX Runtime's own per-node profile. Node names carry the module path the exporter wrote
  (``/model/model.3/cv1/conv/Conv``, or for a conv fused with its activation ``/model/model.3/cv1/act/Relu``);
  each Conv, Gemm or MatMul node is charged to the conv or linear layer of the deepest module on its path that
  holds exactly one. Nodes without a path (ONNX Runtime's own layout changes, the graph's glue) are charged to
  no layer: that time does not change with widths in this model.

Layers inside an attention module are not timed (its functional call uses their weights: the time is the
attention's). What is *not* in the table (grid sampling, attention products, elementwise ops) is time pruning does not
buy back by this model, which ranks channels by the time their layers take, not by their FLOPs.

Example:
    >>> table = layer_times(model, batch=8, imgsz=640, backend="onnxruntime")
    >>> table["model.0.m.0.cv1.conv"]  # ms per batch, e.g. 41.2
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.bench import onnx as bench_onnx
from rtdetr_prune.bench.timing import physical_cores
from rtdetr_prune.measure import counts
from rtdetr_prune.models import family_of
from rtdetr_prune.threads import torch_threads

TIMED = (nn.Conv2d, nn.Linear)
ORT_OPS = {"Conv", "Gemm", "MatMul", "FusedMatMul", "FusedConv", "FusedGemm"}


def layer_times(model: nn.Module, batch: int = 8, imgsz: int = 640, backend: str = "torch", device: str = "cpu",
                repeats: int = 3, threads: int | None = None) -> dict[str, float]:
    """Milliseconds per forward pass of ``batch`` images each conv/linear layer of ``model``'s fused copy takes,
    by layer name (the fused model's names, which the pruning planner matches to the model's layers).

    Args:
        model: the detection model (not changed).
        batch, imgsz: the forward pass timed (images per pass, square side in pixels).
        backend: "torch" or "onnxruntime".
        device: "cpu", "cuda" or "cuda:N".
        repeats: timed passes (after one untimed); medians over them.
        threads: CPU threads (default: physical cores).
    """
    dev = torch.device(device)
    fused = counts.fused(model).to(dev)
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch_threads(threads or physical_cores()):
        if backend == "onnxruntime":
            return _ort_times(fused, x, threads or physical_cores(), repeats)
        return _torch_times(fused, x, repeats)


def _timed(fused: nn.Module) -> dict[nn.Module, str]:
    """The conv and linear layers to time, by module: not those inside an attention (its functional call uses
    their weights; its time is the attention's, not theirs)."""
    inside = {m for a in fused.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules()}
    return {m: n for n, m in fused.named_modules() if isinstance(m, TIMED) and m not in inside}


def _torch_times(fused: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    names = _timed(fused)
    runs: list[dict[str, float]] = []
    start: dict[nn.Module, float] = {}
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda *a: None)

    def before(m, args):
        sync(x.device)
        start[m] = time.perf_counter()

    def after(m, args, y):
        sync(x.device)
        runs[-1][names[m]] = runs[-1].get(names[m], 0.0) + (time.perf_counter() - start[m]) * 1000

    handles = [h for m in names for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.inference_mode():
            for i in range(repeats + 1):
                runs.append({})
                fused(x)
    finally:
        for h in handles:
            h.remove()
    return _medians(runs[1:])


def _ort_times(fused: nn.Module, x: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rtdetr-layers-") as tmp:
        view = family_of(fused).export_module(fused)
        path = bench_onnx.export(view, x, Path(tmp) / "model.onnx")
        sess = bench_onnx.session(path, x.device, threads, profile_prefix=str(Path(tmp) / "profile"))
        feed = {bench_onnx.INPUT: x.cpu().numpy()}
        for _ in range(repeats + 1):
            sess.run([bench_onnx.OUTPUTS[0]], feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    owner = _owners(fused)
    runs_at = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs: list[dict[str, float]] = [defaultdict(float) for _ in runs_at]
    for e in events:
        if e.get("cat") != "Node" or e.get("args", {}).get("op_name") not in ORT_OPS:
            continue
        layer = owner(e["name"])
        run = sum(1 for t in runs_at if t <= e["ts"]) - 1
        if layer and run >= 0:
            runs[run][layer] += e["dur"] / 1000
    return _medians(runs[1:])


def _owners(fused: nn.Module):
    """Node name -> the conv/linear layer charged for it (None when its path names no single one)."""
    timed: dict[str, list[str]] = defaultdict(list)  # module name -> the timed layers inside it
    for n in _timed(fused).values():
        parts = n.split(".")
        for i in range(len(parts) + 1):
            timed[".".join(parts[:i])].append(n)

    def owner(node: str) -> str | None:
        path = [p for p in node.split("/") if p][:-1]  # the module path, without the op's own name
        if path and path[0] == "model" and len(path) > 1 and path[1].startswith("model."):
            path = path[1:]  # the export view holds the detection model as `model`
        for i in range(len(path), 0, -1):
            inside = timed.get(".".join(path[:i]), [])
            if len(inside) == 1:
                return inside[0]
            if len(inside) > 1:
                return None
        return None

    return owner


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in runs for k in r}
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
