"""Latency benchmark of several models side by side: PyTorch or ONNX Runtime, CPU or CUDA.

Every model is timed on the same fixed batch of images, fused (Conv+BN folded) and in inference
mode, *interleaved*: round r times A once, then B, then C, so a machine whose speed drifts during
the run shifts all models alike. Each row reports the model's median latency per image and the
median over rounds of its time relative to the first model's, next to its GFLOPs ratio: the last
column, latency ratio / GFLOPs ratio, says how much of a FLOP cut turned into speed (1.0: all of it;
above 1: less, e.g. memory-bound layers or per-op overhead).

Example:
    >>> result = bench(["rtdetr-r18", "runs/prune/model.pt"], batch=8, imgsz=640)
    >>> print(format_bench(result))  # a markdown table
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Mapping

import torch
from torch import nn

from rtdetr_prune.bench import onnx as bench_onnx
from rtdetr_prune.bench.timing import Timer, interleaved, physical_cores, summarize, torch_runner
from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.measure import counts
from rtdetr_prune.models import family_of, load_model
from rtdetr_prune.recipe import validate
from rtdetr_prune.threads import torch_threads

BACKENDS = ("torch", "onnxruntime")
ATOL = {False: 1e-3, True: 5e-2}  # ONNX-vs-PyTorch tolerance on raw decoder outputs: fp32, fp16
MAX_ROUNDS = 10_000  # of warm-up or timed rounds: more is a typo, and would run for hours


def bench(
    models: Iterable | Mapping,
    batch: int = 8,
    imgsz: int = 640,
    backend: str = "torch",
    device: str = "cpu",
    half: bool = False,
    warmup: int = 3,
    repeats: int = 10,
    onnx_dir: str | Path | None = None,
    atol: float | None = None,
    nc: int | None = None,
    threads: int | None = None,
    timer: Timer = time.perf_counter,
) -> dict:
    """Time models side by side, interleaved, and compare latency with GFLOPs.

    Args:
        models: model specs as :func:`rtdetr_prune.load_model` takes them (zoo name, ``.yaml``,
            ``.pt``, pruned-model directory) or model objects; an item may be a ``(label, spec)`` pair,
            or give a ``{label: spec}`` mapping. The first model is the reference for ratios.
        batch: images per forward pass (8, as in the seed's tables).
        imgsz: square image side, pixels (multiple of 32).
        backend: "torch" (eager PyTorch) or "onnxruntime" (each model exported to ONNX first,
            its outputs checked against PyTorch's before timing).
        device: "cpu", "cuda" or "cuda:N".
        half: fp16 (CUDA only).
        warmup: untimed rounds first.
        repeats: timed rounds; medians are over these.
        onnx_dir: keep the exported ``.onnx`` files here (a temporary folder otherwise).
        atol: largest accepted ONNX-vs-PyTorch absolute difference on the decoder's inputs and raw
            outputs (default 1e-3 in fp32, 5e-2 in fp16); see :func:`bench_onnx.check_outputs`.
        nc: classes for models built from YAML (ignored for checkpoints and objects).
        threads: CPU threads for PyTorch and ONNX Runtime intra-op work (default: physical cores).
        timer: clock in seconds (injectable for tests).

    Returns:
        ``{"backend", "device", "batch", "imgsz", "half", "threads", "warmup", "repeats", "atol",
        "rows"}``; each row has ``model``, ``params``, ``gflops`` (per image), ``latency_ms``
        (median per image), ``latency_ratio`` and ``gflops_ratio`` (to the first model),
        ``onnx_max_abs_diff``, ``onnx_tied_images`` (check images whose query selection was a tie,
        compared up to the decoder's inputs) and ``onnx_file`` (None for the torch backend or a
        temporary file).

    Raises:
        UserError: bad options, unloadable models, or (as ``OnnxMismatch``) an ONNX export whose
            outputs differ from PyTorch's by more than ``atol``.
    """
    dev = _check_options(backend, device, half, imgsz, batch, warmup, repeats)
    atol = ATOL[half] if atol is None else atol
    threads = threads or physical_cores()
    named = _load(models, nc)
    sizes = [counts.params_and_gflops(m, imgsz) for _, m in named]
    fused = [_prepare(m, dev, half) for _, m in named]
    x = _images(batch, imgsz, dev, half)
    with torch_threads(threads), _folder(onnx_dir) as folder:
        if backend == "torch":
            runners, diffs, files = [torch_runner(m, x) for m in fused], [None] * len(fused), [None] * len(fused)
        else:
            runners, diffs, files = _onnx_runners(named, fused, x, Path(folder), dev, threads, atol)
        timing = summarize(interleaved(runners, warmup, repeats, timer), batch)
        settings = _thread_settings(backend, threads)
    files = files if onnx_dir is not None else [None] * len(files)
    rows = [_row(label, c, sizes[0], t, d, f) for (label, _), c, t, d, f in zip(named, sizes, timing, diffs, files)]
    return {"backend": backend, "device": str(dev), "batch": batch, "imgsz": imgsz, "half": half,
            "threads": settings, "warmup": warmup, "repeats": repeats,
            "atol": atol if backend == "onnxruntime" else None, "rows": rows}


def format_bench(result: dict) -> str:
    """A markdown table of a :func:`bench` result, with a one-line header of the settings.

    Example:
        >>> print(format_bench(bench(["rtdetr-tiny", "rtdetr-r18"], imgsz=160)))  # doctest: +SKIP
    """
    t = result["threads"]
    lines = [
        f"{result['backend']} on {result['device']}, batch {result['batch']}, {result['imgsz']} px, "
        f"{'fp16' if result['half'] else 'fp32'}, {t['intra_op']} intra-op threads; median of "
        f"{result['repeats']} interleaved rounds ({result['warmup']} untimed warm-up rounds first)",
        "",
    ]
    onnx = result["backend"] == "onnxruntime"
    head = ["model", "params (M)", "GFLOPs", "latency ms/img", "latency ratio", "GFLOPs ratio",
            "latency ratio / GFLOPs ratio"] + (["ONNX max abs diff (images with tied query selection)"] if onnx else [])
    lines += [_md(head), _md(["---"] + ["---:"] * (len(head) - 1))]
    lines += [_md(_cells(r, onnx)) for r in result["rows"]]
    return "\n".join(lines)


def _cells(r: dict, onnx: bool) -> list[str]:
    cells = [r["model"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.2f}", f"{r['latency_ms']:.2f}",
             f"{r['latency_ratio']:.3f}", f"{r['gflops_ratio']:.3f}", f"{r['latency_ratio'] / r['gflops_ratio']:.3f}"]
    if not onnx:
        return cells
    tied = f" ({r['onnx_tied_images']} tied)" if r.get("onnx_tied_images") else ""
    return cells + [f"{r['onnx_max_abs_diff']:.2e}{tied}"]


def _md(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _check_options(backend, device, half, imgsz, batch, warmup, repeats) -> torch.device:
    if backend not in BACKENDS:
        raise UserError(f"Unknown backend '{backend}'.{suggest(backend, BACKENDS)} Choose one of {', '.join(BACKENDS)}.")
    validate(SimpleNamespace(imgsz=imgsz, batch=batch))  # the recipe's checks: a multiple of 32, batch 1-1024
    if not (1 <= repeats <= MAX_ROUNDS and 0 <= warmup <= MAX_ROUNDS):
        raise UserError(f"Need repeats from 1 to {MAX_ROUNDS} and warmup from 0 to {MAX_ROUNDS} (got {repeats}, "
                        f"{warmup}); medians settle within tens of rounds.")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"Unknown device '{device}' ({e}). Use cpu, cuda or cuda:N.") from e
    if dev.type not in {"cpu", "cuda"}:
        raise UserError(f"Device '{device}' is not supported for benchmarking; use cpu, cuda or cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"Device '{device}' asked for, but PyTorch sees no CUDA GPU here. Use --device cpu.")
    if half and dev.type != "cuda":
        raise UserError("--half (fp16) is for CUDA devices only: CPU fp16 kernels are slow or missing, so its "
                        "timings would mislead. Drop --half, or use --device cuda.")
    return dev


def _load(models: Iterable | Mapping, nc: int | None) -> list[tuple[str, nn.Module]]:
    """(label, model) pairs with unique labels: a spec's own string, or ``model<i>`` for objects."""
    items = list(models.items()) if isinstance(models, Mapping) else list(models)
    if not items:
        raise UserError("No models to benchmark: give at least one model spec.")
    named, seen = [], set()
    for i, item in enumerate(items):
        label, spec = item if isinstance(item, tuple) else (None, item)
        label = str(label if label is not None else (f"model{i}" if isinstance(spec, nn.Module) else spec))
        unique = label if label not in seen else f"{label}#{i}"
        seen.add(unique)
        named.append((unique, load_model(spec, nc=nc)))
    return named


def _prepare(model: nn.Module, dev: torch.device, half: bool) -> nn.Module:
    """A fused eval-mode copy on ``dev`` (fp16 with ``half``); the caller's model is untouched."""
    m = counts.fused(model).to(dev)
    return m.half() if half else m


def _images(batch: int, imgsz: int, dev: torch.device, half: bool) -> torch.Tensor:
    """Fixed random images (B, 3, imgsz, imgsz) in [0, 1]: the same every run, realistic for checks."""
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(dev)
    return x.half() if half else x


def _onnx_runners(named, fused, x, folder: Path, dev, threads: int, atol: float):
    """Export, check against PyTorch, and wrap each model in an ONNX Runtime runner."""
    runners, diffs, files = [], [], []
    for i, ((label, _), model) in enumerate(zip(named, fused)):
        view = family_of(model).export_module(model)
        path = bench_onnx.export(view, x, folder / f"{i}-{_safe(label)}.onnx")
        sess = bench_onnx.session(path, dev, threads)
        check = bench_onnx.check_outputs(sess, view, x, atol)
        bench_onnx.check_close(label, check.max_abs_diff, atol)
        runners.append(bench_onnx.ort_runner(sess, x))
        diffs.append(check)
        files.append(str(path))
    return runners, diffs, files


def _row(label: str, size: tuple[int, float], base: tuple[int, float], timing: dict, diff, file) -> dict:
    params, gflops = size
    return {"model": label, "params": params, "gflops": gflops, "latency_ms": timing["latency_ms"],
            "latency_ratio": timing["latency_ratio"], "gflops_ratio": gflops / base[1],
            "onnx_max_abs_diff": None if diff is None else diff.max_abs_diff,
            "onnx_tied_images": None if diff is None else diff.tied_images, "onnx_file": file}


def _thread_settings(backend: str, threads: int) -> dict:
    """The thread settings that shaped the numbers, for the record."""
    if backend == "onnxruntime":
        return {"intra_op": threads, "inter_op": 1, "execution_mode": "sequential", "spinning": False,
                "physical_cores": physical_cores()}
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
            "physical_cores": physical_cores()}


def _folder(onnx_dir: str | Path | None):
    if onnx_dir is None:
        return tempfile.TemporaryDirectory(prefix="rtdetr-bench-")
    Path(onnx_dir).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(onnx_dir))


def _safe(label: str) -> str:
    """A file-name-safe version of a model label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label).name if "/" in label else label)[:60] or "model"
