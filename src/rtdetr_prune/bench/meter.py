"""Time candidate models against one reference, interleaved, in this process: what a latency target measures.

:func:`~rtdetr_prune.bench.latency.bench` times a list of models once; pruning to a latency target times a few
candidates one after another against the same base model. A :class:`LatencyMeter` prepares the reference once
(fused, on the device; exported to ONNX and checked against PyTorch for ONNX Runtime) and then, for each
candidate, runs warm-up and timed rounds alternating reference and candidate (R C R C ...), so that a machine
whose speed drifts shifts both alike. The ratio is the median over rounds of candidate time / reference time.

Example:
    >>> meter = LatencyMeter(base, batch=8, imgsz=640, backend="onnxruntime")
    >>> meter.speed_up(pruned)  # base time / pruned time, e.g. 1.97
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.bench import onnx as bench_onnx
from rtdetr_prune.bench.timing import Runner, Timer, interleaved, physical_cores, summarize, torch_runner
from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.measure import counts
from rtdetr_prune.models import family_of
from rtdetr_prune.recipe import BACKENDS
from rtdetr_prune.threads import torch_threads


@dataclass(frozen=True)
class Timing:
    """One candidate timed against the reference."""

    speed_up: float  # reference time / candidate time (median over rounds of the per-round ratio)
    ms: float  # candidate's median ms per image
    reference_ms: float  # reference's median ms per image in the same rounds


class LatencyMeter:
    """Times models against ``reference`` (see the module docstring). Holds a fused copy of it, not the model.

    Args:
        reference: the model speed-ups are relative to (the unpruned model).
        batch: images per forward pass.
        imgsz: square image side, pixels.
        backend: "torch" (eager) or "onnxruntime".
        device: "cpu", "cuda" or "cuda:N".
        warmup: untimed rounds before each measurement.
        repeats: timed rounds per measurement (each times the reference and the candidate once).
        threads: CPU threads (default: the physical cores).
        timer: clock in seconds (injectable for tests).
    """

    def __init__(self, reference: nn.Module, batch: int = 8, imgsz: int = 640, backend: str = "torch",
                 device: str = "cpu", warmup: int = 2, repeats: int = 7, threads: int | None = None,
                 timer: Timer = time.perf_counter):
        if backend not in BACKENDS:
            raise UserError(f"Unknown backend '{backend}'.{suggest(backend, BACKENDS)} Choose one of "
                            f"{', '.join(BACKENDS)}.")
        self.backend, self.device = backend, torch.device(device)
        self.warmup, self.repeats, self.timer = warmup, repeats, timer
        self.threads = threads or physical_cores()
        self.batch = batch
        self.x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(self.device)
        self._folder = tempfile.TemporaryDirectory(prefix="rtdetr-meter-")
        self._count = 0
        self.reference = self._runner(reference, "reference")
        self.measurements = 0  # timed evaluations so far

    def speed_up(self, model: nn.Module) -> Timing:
        """Time ``model`` against the reference (warm-up, then timed rounds, interleaved)."""
        self._count += 1
        runner = self._runner(model, f"candidate{self._count}")
        with torch_threads(self.threads):
            rounds = interleaved([self.reference, runner], self.warmup, self.repeats, self.timer)
        ref, cand = summarize(rounds, self.batch)
        self.measurements += 1
        return Timing(1.0 / cand["latency_ratio"], cand["latency_ms"], ref["latency_ms"])

    def close(self) -> None:
        """Remove the exported ONNX files."""
        self._folder.cleanup()

    def _runner(self, model: nn.Module, label: str) -> Runner:
        fused = counts.fused(model).to(self.device)
        if self.backend == "torch":
            return torch_runner(fused, self.x)
        view = family_of(fused).export_module(fused)
        path = bench_onnx.export(view, self.x, Path(self._folder.name) / f"{label}.onnx")
        sess = bench_onnx.session(path, self.device, self.threads)
        check = bench_onnx.check_outputs(sess, view, self.x, 1e-3)
        bench_onnx.check_close(label, check.max_abs_diff, 1e-3)
        return bench_onnx.ort_runner(sess, self.x)
