"""Time candidate models against one reference, interleaved, in this process: what a latency target measures.

:func:`~rtdetr_prune.bench.latency.bench` times a list of models once; pruning to a latency target times a few
candidates one after another against the same base model. A :class:`LatencyMeter` prepares the reference once
(fused, on the device; exported to ONNX and checked against PyTorch for ONNX Runtime) and then, for each
candidate, runs warm-up and timed rounds alternating reference and candidate (R C R C ...), so that a machine
whose speed drifts shifts both alike. The ratio is the median over rounds of candidate time / reference time;
while the rounds disagree (the ~95% interval of that median, :func:`~rtdetr_prune.bench.timing.median_interval`,
is wider than ``spread`` either side of it) more rounds are timed, up to ``max_repeats``, and the interval's
half-width is reported with the ratio, so a caller can tell a firm measurement from a noisy one.
A round of a fast model repeats its forward pass until it lasts about ``min_round_s`` (a small model at a small
image size runs in milliseconds, where scheduling noise is as large as the time itself).

Example:
    >>> meter = LatencyMeter(base, batch=8, imgsz=640, backend="onnxruntime")
    >>> meter.speed_up(pruned)  # base time / pruned time, e.g. 1.97
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.bench import onnx as bench_onnx
from rtdetr_prune.bench.timing import (Runner, Timer, interleaved, median_interval, physical_cores, summarize,
                                       torch_runner)
from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.measure import counts
from rtdetr_prune.models import family_of
from rtdetr_prune.recipe import BACKENDS
from rtdetr_prune.threads import torch_threads

MIN_ROUND_S = 0.2  # shortest timed round, seconds: a faster model's pass is repeated within the round
MAX_CALLS = 1000  # most passes per round
SPREAD = 0.02  # time more rounds while the median ratio's ~95% interval is wider than this share either side


@dataclass(frozen=True)
class Timing:
    """One candidate timed against the reference."""

    speed_up: float  # reference time / candidate time (median over rounds of the per-round ratio)
    ms: float  # candidate's median ms per image
    reference_ms: float  # reference's median ms per image in the same rounds
    spread: float = 0.0  # half-width of the ~95% interval of the median ratio, as a share of it (0.02: +-2%)
    rounds: int = 0  # timed rounds it took


class LatencyMeter:
    """Times models against ``reference`` (see the module docstring). Holds a fused copy of it, not the model.

    Args:
        reference: the model speed-ups are relative to (the unpruned model).
        batch: images per forward pass.
        imgsz: square image side, pixels.
        backend: "torch" (eager) or "onnxruntime".
        device: "cpu", "cuda" or "cuda:N".
        warmup: untimed rounds before each measurement.
        repeats: timed rounds per measurement (each times the reference and the candidate once), at least.
        max_repeats: timed rounds at most, while the rounds disagree by more than ``spread`` (default 3 x repeats).
        spread: the ~95% interval's half-width (share of the ratio) at which a measurement stops adding rounds.
        threads: CPU threads (default: the physical cores).
        timer: clock in seconds (injectable for tests).
        min_round_s: shortest round, seconds; ``calls`` (forward passes per round, found by timing the
            reference once) is set so the reference's round lasts at least that long.
    """

    def __init__(self, reference: nn.Module, batch: int = 8, imgsz: int = 640, backend: str = "torch",
                 device: str = "cpu", warmup: int = 2, repeats: int = 7, threads: int | None = None,
                 timer: Timer = time.perf_counter, min_round_s: float = MIN_ROUND_S, max_repeats: int | None = None,
                 spread: float = SPREAD):
        if backend not in BACKENDS:
            raise UserError(f"Unknown backend '{backend}'.{suggest(backend, BACKENDS)} Choose one of "
                            f"{', '.join(BACKENDS)}.")
        self.backend, self.device = backend, torch.device(device)
        self.warmup, self.repeats, self.timer = warmup, repeats, timer
        self.max_repeats, self.spread = max(repeats, max_repeats or 3 * repeats), spread
        self.threads = threads or physical_cores()
        self.batch = batch
        self.x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(self.device)
        self._folder = tempfile.TemporaryDirectory(prefix="rtdetr-meter-")
        self._count = 0
        self.reference = self._runner(reference, "reference")
        self.calls = self._calls(min_round_s)  # forward passes per timed round
        self.measurements = 0  # timed evaluations so far

    def speed_up(self, model: nn.Module) -> Timing:
        """Time ``model`` against the reference: warm-up, ``repeats`` interleaved rounds, then more (``repeats`` at
        a time, up to ``max_repeats``) while the median ratio's interval is wider than ``spread`` either side."""
        self._count += 1
        runner = self._runner(model, f"candidate{self._count}")
        runners = [_repeated(r, self.calls) for r in (self.reference, runner)]
        with torch_threads(self.threads):
            rounds = interleaved(runners, self.warmup, self.repeats, self.timer)
            while _spread(rounds) > self.spread and len(rounds) < self.max_repeats:
                rounds += interleaved(runners, 0, min(self.repeats, self.max_repeats - len(rounds)), self.timer)
        ref, cand = summarize(rounds, self.batch * self.calls)
        self.measurements += 1
        return Timing(1.0 / cand["latency_ratio"], cand["latency_ms"], ref["latency_ms"], _spread(rounds), len(rounds))

    def _calls(self, min_round_s: float) -> int:
        """Forward passes per round: enough for the reference to run ``min_round_s`` (after one warm-up pass)."""
        with torch_threads(self.threads):
            self.reference()
            t0 = self.timer()
            self.reference()
            once = self.timer() - t0
        return 1 if once <= 0 else max(1, min(MAX_CALLS, math.ceil(min_round_s / once)))

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


def _spread(rounds: list[list[float]]) -> float:
    """Half-width of the ~95% interval of the median candidate/reference ratio over ``rounds``, as a share of it."""
    ratios = [c / r for r, c in rounds if r > 0]
    if len(ratios) < 2:
        return float("inf")
    lo, hi = median_interval(ratios)
    return (hi - lo) / 2 / statistics.median(ratios)


def _repeated(run: Runner, calls: int) -> Runner:
    """``run`` called ``calls`` times in a row (one timed round)."""
    if calls == 1:
        return run

    def many():
        for _ in range(calls):
            run()

    return many
