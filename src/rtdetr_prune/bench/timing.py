"""Interleaved timing: the clock and the statistics behind :func:`rtdetr_prune.bench.bench`.

Models are timed in rounds, one pass each per round (A B C, A B C, ...), so that a machine which
speeds up or slows down during the run (turbo, thermal limits, a neighbour's job) affects every
model alike, and per-round ratios stay meaningful. A *runner* is a no-argument callable that does
one complete forward pass and returns only when its result is ready (CUDA synchronized).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn

Runner = Callable[[], object]
Timer = Callable[[], float]


def interleaved(runners: Sequence[Runner], warmup: int, repeats: int, timer: Timer = time.perf_counter) -> list[list[float]]:
    """Time each runner once per round, in order, for ``warmup`` untimed then ``repeats`` timed rounds.

    Args:
        runners: one forward pass each; the first is the reference for ratios.
        warmup: untimed rounds first (allocators, lazy init, cuDNN autotune), interleaved too.
        repeats: timed rounds.
        timer: a clock in seconds (injectable for tests).

    Returns:
        ``times[r][i]``: seconds runner ``i`` took in timed round ``r``.

    Example:
        >>> interleaved([lambda: None, lambda: None], warmup=0, repeats=2)  # doctest: +SKIP
        [[1e-07, 1e-07], [1e-07, 1e-07]]
    """
    for _ in range(warmup):
        for run in runners:
            run()
    rounds = []
    for _ in range(repeats):
        row = []
        for run in runners:
            t0 = timer()
            run()
            row.append(timer() - t0)
        rounds.append(row)
    return rounds


def summarize(rounds: list[list[float]], batch: int) -> list[dict]:
    """Per model: median latency per image (ms) and the median over rounds of its time / the first's.

    Args:
        rounds: ``times[r][i]`` in seconds for a batch, as :func:`interleaved` returns.
        batch: images per pass, to turn batch times into per-image times.

    Returns:
        One dict per model: ``latency_ms`` (median ms per image) and ``latency_ratio``
        (1.0 for the first model).
    """
    out = []
    for i in range(len(rounds[0])):
        times = [r[i] for r in rounds]
        ratios = [r[i] / r[0] if r[0] > 0 else float("nan") for r in rounds]
        out.append({"latency_ms": statistics.median(times) * 1000.0 / batch, "latency_ratio": statistics.median(ratios)})
    return out


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free ~95% interval for the median of ``values``: two order statistics around it.

    The k-th smallest and k-th largest values with k = floor(n/2 - 0.98 sqrt(n)) (at least 1), the normal
    approximation to the binomial interval of the median: no assumption on how the times are spread (a round
    that a neighbour's job slowed is an outlier, not a Gaussian tail).

    Example:
        >>> median_interval([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0])
        (0.9, 1.1)
    """
    xs = sorted(values)
    k = max(1, int(len(xs) / 2 - 0.98 * len(xs) ** 0.5))
    return xs[k - 1], xs[-k]


def torch_runner(model: nn.Module, x: torch.Tensor) -> Runner:
    """One inference-mode forward pass of ``model`` on ``x``, synchronized when on CUDA."""

    def run():
        with torch.inference_mode():
            y = model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return y

    return run


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads do not count; CPU affinity does)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # psutil comes with Ultralytics; this is only a fallback
        cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):  # containers and taskset limit the usable CPUs
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)
