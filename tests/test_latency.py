"""Measured-latency target and latency-aware ranking, checked with stand-in clocks and cost tables (no timing
is asserted: timed results come from benchmarks/latency_target.py on an idle machine)."""

import dataclasses
import itertools

import numpy as np
import pytest
from conftest import IMGSZ
from torch import nn

from rtdetr_prune.bench.layer_times import layer_times
from rtdetr_prune.bench.meter import LatencyMeter, Timing
from rtdetr_prune.bench.timing import median_interval
from rtdetr_prune.errors import UserError
from rtdetr_prune.measure import counts
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.latency_aware import LayerCosts, _widths
from rtdetr_prune.pruning.latency_target import _next_aim, prune_to_latency
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.recipe import Recipe


class LineMeter:
    """A meter whose 'time' follows latency ratio = c + (1 - c) * GFLOPs ratio exactly (c: time that stays)."""

    backend, device = "line", "cpu"

    def __init__(self, reference: nn.Module, c: float):
        self.base, self.c, self.measurements = counts.gflops(reference, IMGSZ), c, 0

    def speed_up(self, model: nn.Module) -> Timing:
        self.measurements += 1
        ratio = self.c + (1 - self.c) * counts.gflops(model, IMGSZ) / self.base
        return Timing(1 / ratio, ratio, 1.0)


@pytest.mark.parametrize("c", [0.0, 0.3])
def test_latency_target_lands_in_few_timed_evaluations(tiny, c):
    meter = LineMeter(tiny, c)
    out = prune_to_latency(tiny, get_method("l1"), PruneOptions(speed_up=1.4, imgsz=IMGSZ, round_to=8), meter)
    assert abs(out.measured / 1.4 - 1) <= 0.03, out.evaluations
    assert len(out.evaluations) <= 3 and meter.measurements == len(out.evaluations) + 1  # the landing, timed twice
    assert len(out.evaluations[-1]["timings"]) == 2 and all(len(e["timings"]) == 1 for e in out.evaluations[:-1])
    want = 1 / ((1 / 1.4 - c) / (1 - c))  # the GFLOPs speed-up this line needs for 1.4x in time
    assert out.result.speed_up == pytest.approx(want, rel=0.06)
    assert "measured speed-up" in out.message and f"{out.result.speed_up:.3f}x fewer GFLOPs" in out.message


# GFLOPs ratio -> latency ratio of rtdetr-r18 (640 px, batch 8, eager PyTorch, CPU) as measured by
# benchmarks/latency_target.py: concave at deep cuts, where fixed costs weigh more.
EAGER_R18 = ([0.1985, 0.2198, 0.2823, 0.333, 1.0], [0.3121, 0.3175, 0.3589, 0.4435, 1.0])


def _search(curve, target: float, evaluations: int = 6) -> list[tuple[float, float]]:
    """The aims prune_to_latency would time on a model whose latency follows ``curve`` exactly (no engine)."""
    tried, aim = [], target
    for _ in range(evaluations):
        g = 1 / aim
        r = float(np.interp(g, *curve))
        tried.append((g, r, None))
        if abs(1 / r / target - 1) <= 0.03:
            break
        aim = _next_aim(tried, target)
    return [(1 / g, 1 / r) for g, r, _ in tried]


def test_latency_target_on_a_concave_curve_brackets_instead_of_extrapolating():
    """Once measurements lie on both sides of the target, the next aim interpolates between them; a secant
    through two points on one side (the old aim) overshot on this curve and needed a fifth timed candidate."""
    steps = _search(EAGER_R18, 3.0)
    assert abs(steps[-1][1] / 3.0 - 1) <= 0.03 and len(steps) <= 4, steps


def test_the_same_model_timed_twice_does_not_make_the_line_and_breaks_nothing():
    """Regression: two timings of one model (the engine at its limit returns the same cut for a deeper aim) on
    both sides of the target were taken as the bracket, and the line between them divided by zero."""
    want = 1 / 1.3
    tried = [(0.75, want + 0.01, None), (0.75, want - 0.01, None)]
    aim = _next_aim(tried, 1.3)  # the line through the base and this GFLOPs ratio instead
    r = np.mean([r for _, r, _ in tried])
    assert aim == pytest.approx(1 / (1 + (want - 1) * (0.75 - 1) / (r - 1)), rel=0.05)


def test_unreachable_latency_target_stops_at_the_model_limit(tiny):
    meter = LineMeter(tiny, 0.8)  # at most 1.25x in time, whatever the GFLOPs
    out = prune_to_latency(tiny, get_method("l1"), PruneOptions(speed_up=1.5, imgsz=IMGSZ, round_to=8), meter)
    assert out.measured < 1.25 and len(out.evaluations) <= 4 and "outside" in out.message


def test_meter_times_reference_and_candidate_interleaved(tiny):
    clock = itertools.count(step=0.5)
    meter = LatencyMeter(tiny, batch=1, imgsz=64, backend="torch", warmup=0, repeats=3, threads=1,
                         timer=lambda: next(clock))
    timing = meter.speed_up(tiny)
    assert timing.speed_up == 1.0 and timing.ms == timing.reference_ms == 500.0 and meter.measurements == 1
    with pytest.raises(UserError, match="Did you mean 'onnxruntime'"):
        LatencyMeter(tiny, backend="onnxruntme")


def test_meter_repeats_a_fast_model_within_a_round_and_reports_time_per_image(tiny):
    clock = itertools.count(step=0.25)  # every pass "takes" 0.25 s by this clock (it advances per reading)
    meter = LatencyMeter(tiny, batch=2, imgsz=64, backend="torch", warmup=0, repeats=3, threads=1,
                         timer=lambda: next(clock), min_round_s=1.0)
    assert meter.calls == 4  # 1.0 s / 0.25 s per pass
    timing = meter.speed_up(tiny)  # one reading pair per round: 0.25 s for 4 passes of 2 images
    assert timing.ms == timing.reference_ms == pytest.approx(0.25 / (4 * 2) * 1000) and timing.speed_up == 1.0


class NoisyFirstMeter(LineMeter):
    """A line meter whose first measurement shows no gain at all (timing noise on a small, fast model)."""

    def speed_up(self, model: nn.Module) -> Timing:
        timing = super().speed_up(model)
        return Timing(0.99, 1.0, 1.0) if self.measurements == 1 else timing


def test_a_measurement_without_gain_sends_the_search_deeper_instead_of_stopping(tiny):
    meter = NoisyFirstMeter(tiny, 0.3)
    out = prune_to_latency(tiny, get_method("l1"), PruneOptions(speed_up=1.4, imgsz=IMGSZ, round_to=8), meter)
    assert len(out.evaluations) >= 2 and out.evaluations[1]["gflops_target"] > out.evaluations[0]["gflops_speed_up"]
    assert abs(out.measured / 1.4 - 1) <= 0.03, out.evaluations


class LuckyFirstMeter(LineMeter):
    """A line meter whose first timing says exactly ``lucky`` (a noisy machine's lucky reading), then the truth."""

    def __init__(self, reference: nn.Module, c: float, lucky: float):
        super().__init__(reference, c)
        self.lucky = lucky

    def speed_up(self, model: nn.Module) -> Timing:
        timing = super().speed_up(model)
        return Timing(self.lucky, 1.0, 1.0) if self.measurements == 1 else timing


def test_a_lucky_timing_is_confirmed_before_the_search_stops(tiny):
    """The first candidate's true speed-up is 1.25x (c = 0.3, 1.4x fewer GFLOPs); its first timing says 1.4x.
    Without the second timing the search accepts it; with it, the mean of both (1.32x) is outside the window and
    the search goes on to a candidate that is really at 1.4x."""
    options = PruneOptions(speed_up=1.4, imgsz=IMGSZ, round_to=8)
    blind = prune_to_latency(tiny, get_method("l1"), options, LuckyFirstMeter(tiny, 0.3, 1.4), confirm=False)
    assert len(blind.evaluations) == 1 and blind.measured == 1.4  # accepted a model that runs at 1.25x
    out = prune_to_latency(tiny, get_method("l1"), options, LuckyFirstMeter(tiny, 0.3, 1.4))
    first = out.evaluations[0]
    assert [t["speed_up"] for t in first["timings"]] == [1.4, pytest.approx(1.25, rel=0.02)]
    assert first["measured_speed_up"] == pytest.approx((1.4 * 1.25) ** 0.5, rel=0.02)
    assert len(out.evaluations) >= 2 and abs(out.measured / 1.4 - 1) <= 0.03, out.evaluations
    assert out.result.speed_up > blind.result.speed_up  # deeper in GFLOPs, as the true line needs


def _clock(durations):
    """A timer whose consecutive start/stop readings are ``durations`` apart (seconds), pair after pair."""
    now, readings = 0.0, []
    for d in durations:
        readings += [now, now + d]
        now += d + 1.0
    it = iter(readings)
    return lambda: next(it)


@pytest.mark.parametrize("noisy", [False, True])
def test_meter_times_more_rounds_while_they_disagree(tiny, noisy):
    """Reference 1.0 s per round; the candidate 0.5 s, or 0.5 and 0.7 s in turn (the rounds disagree by 17%):
    steady rounds stop at ``repeats``, disagreeing ones go on to ``max_repeats`` and report their spread."""
    cand = [0.5, 0.7] * 10 if noisy else [0.5] * 20
    durations = [1.0] + [d for c in cand for d in (1.0, c)]  # the calls probe, then reference/candidate rounds
    meter = LatencyMeter(tiny, batch=1, imgsz=64, backend="torch", warmup=0, repeats=3, threads=1,
                         timer=_clock(durations), max_repeats=9)
    timing = meter.speed_up(tiny)
    assert meter.calls == 1
    if noisy:
        assert timing.rounds == 9 and timing.spread == pytest.approx((0.7 - 0.5) / 2 / 0.5)  # median of 5x0.5, 4x0.7
        assert timing.speed_up == pytest.approx(2.0)
    else:
        assert timing.rounds == 3 and timing.spread == 0 and timing.speed_up == pytest.approx(2.0)


def test_median_interval_is_order_statistics_around_the_median():
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # few values: the extremes
    xs = list(range(100))
    lo, hi = median_interval(xs)
    assert (lo, hi) == (39, 60)  # k = int(50 - 9.8) = 40: the 40th smallest (39) and 40th largest (60)


def test_layer_times_cover_the_layers(tiny):
    fused = counts.fused(tiny)
    attention = {n for n, m in fused.named_modules() if isinstance(m, nn.MultiheadAttention)}
    layers = {n for n, m in fused.named_modules()  # an attention's out_proj runs inside its functional call
              if isinstance(m, (nn.Conv2d, nn.Linear)) and n.rsplit(".", 1)[0] not in attention}
    torch_ms = layer_times(tiny, batch=1, imgsz=64, backend="torch", repeats=1, threads=1)
    assert set(torch_ms) == layers and all(v > 0 for v in torch_ms.values())
    ort_ms = layer_times(tiny, batch=1, imgsz=64, backend="onnxruntime", repeats=1, threads=1)
    assert set(ort_ms) <= layers and len(ort_ms) >= 0.8 * len(layers)  # nodes with a module path


def test_latency_aware_ranking_follows_the_cost_table(tiny):
    """A layer the table says is slow gives up its channels first; the same table with it fast keeps them."""
    fused = counts.fused(tiny)
    widths = _widths(fused)
    slow = "model.22.decoder.layers.0.linear1"  # the FFN hidden width's group
    flat = LayerCosts({n: 1.0 for n in widths}, widths)
    steep = LayerCosts({**flat.ms, slow: 1000.0}, widths)
    options = PruneOptions(speed_up=1.3, imgsz=IMGSZ, round_to=8, latency_aware=True, decoder_parts="ffn")
    a = prune_to_target(tiny, get_method("l1"), options, costs=steep).widths[slow]
    b = prune_to_target(tiny, get_method("l1"), options, costs=flat).widths[slow]
    assert a < b
    with pytest.raises(ValueError, match="costs"):
        prune_to_target(tiny, get_method("l1"), options)
    assert flat.at(tiny) == flat.ms  # unpruned: the table as measured


def test_latency_target_needs_a_oneshot_schedule():
    with pytest.raises(UserError, match="--target latency works with --schedule oneshot"):
        Recipe(target="latency", schedule="iterative").validate()
    assert dataclasses.replace(Recipe(), target="latency").validate()
