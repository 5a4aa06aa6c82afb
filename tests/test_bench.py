"""The benchmark: both backends give one row per model, ratios to the first model, ONNX outputs checked
against PyTorch's, and models timed interleaved (A B A B). No assertion here depends on real speed."""

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ

from rtdetr_prune.bench import latency as bench_module
from rtdetr_prune.bench import onnx as bench_onnx
from rtdetr_prune.bench.latency import bench, format_bench
from rtdetr_prune.bench.timing import interleaved, physical_cores, summarize
from rtdetr_prune.errors import UserError
from rtdetr_prune.measure import counts as metrics
from rtdetr_prune.models import family_of, load_model
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method

SMALL = dict(batch=2, imgsz=IMGSZ, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def pair():
    """(label, model) for a tiny RT-DETR and a copy pruned to 1.5x fewer GFLOPs."""
    torch.manual_seed(0)
    base = load_model("rtdetr-tiny", nc=3)
    pruned = prune_to_target(base, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ)).model
    return [("base", base), ("pruned", pruned)]


def assert_rows(result, pair):
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["base", "pruned"]
    assert all(r["latency_ms"] > 0 for r in rows)
    assert rows[0]["latency_ratio"] == 1.0 and rows[0]["gflops_ratio"] == 1.0
    (_, base), (_, pruned) = pair
    g0, g1 = metrics.gflops(base, IMGSZ), metrics.gflops(pruned, IMGSZ)
    assert rows[1]["gflops"] == pytest.approx(g1) and rows[1]["gflops_ratio"] == pytest.approx(g1 / g0)
    assert rows[1]["gflops_ratio"] <= 1 / 1.5 + 1e-6  # pruned to at least 1.5x
    assert rows[1]["params"] == metrics.params_and_gflops(pruned, IMGSZ)[0] < rows[0]["params"]
    table = format_bench(result)
    body = [line for line in table.splitlines() if line.startswith("| base") or line.startswith("| pruned")]
    assert len(body) == 2, table


def test_torch_backend(pair):
    before = {k: v.clone() for k, v in pair[0][1].state_dict().items()}
    result = bench(pair, backend="torch", **SMALL)
    assert_rows(result, pair)
    assert result["backend"] == "torch" and result["device"] == "cpu" and result["half"] is False
    assert result["threads"]["intra_op"] == physical_cores()
    assert all(r["onnx_max_abs_diff"] is None for r in result["rows"])
    after = pair[0][1].state_dict()  # the caller's model is timed as a fused copy, never changed
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_onnxruntime_backend(pair, tmp_path):
    result = bench(pair, backend="onnxruntime", onnx_dir=tmp_path, **SMALL)
    assert_rows(result, pair)
    assert result["atol"] == 1e-3
    assert all(0 <= r["onnx_max_abs_diff"] <= result["atol"] for r in result["rows"])
    assert all(Path(r["onnx_file"]).is_file() for r in result["rows"])
    assert result["threads"] == {"intra_op": physical_cores(), "inter_op": 1, "execution_mode": "sequential",
                                 "spinning": False, "physical_cores": physical_cores()}
    assert "ONNX max abs diff" in format_bench(result)


def test_bench_times_models_interleaved(pair, monkeypatch):
    """A fake clock and fake runners: the pass order is A B A B ..., and the numbers follow the clock."""
    calls, clock = [], [0.0]
    seconds = {"base": 0.020, "pruned": 0.010}  # per batch pass
    made = []

    def fake_runner(model, x):
        label = pair[len(made)][0]
        made.append(label)

        def run():
            calls.append(label)
            clock[0] += seconds[label]

        return run

    monkeypatch.setattr(bench_module, "torch_runner", fake_runner)
    result = bench(dict(pair), batch=2, imgsz=IMGSZ, warmup=2, repeats=3, timer=lambda: clock[0])
    assert calls == ["base", "pruned"] * 5
    base, pruned = result["rows"]
    assert base["latency_ms"] == pytest.approx(10.0) and pruned["latency_ms"] == pytest.approx(5.0)  # 20 ms / 2 images
    assert pruned["latency_ratio"] == pytest.approx(0.5)


def test_per_round_ratios_survive_drift():
    """The machine slows down 3x per round: per-model medians drift, the median per-round ratio does not."""
    clock, speed, order = [0.0], [1.0], []

    def runner(name, cost):
        def run():
            order.append(name)
            clock[0] += cost * speed[0]
            if name == "B":
                speed[0] *= 3.0  # slower from the next round on
        return run

    rounds = interleaved([runner("A", 2.0), runner("B", 1.0)], warmup=0, repeats=4, timer=lambda: clock[0])
    assert order == ["A", "B"] * 4
    a, b = summarize(rounds, batch=1)
    assert b["latency_ratio"] == pytest.approx(0.5) and a["latency_ratio"] == 1.0
    assert a["latency_ms"] == pytest.approx(2000.0 * (3 + 9) / 2)  # median of 2, 6, 18, 54 seconds


def test_onnx_mismatch_is_refused(pair, monkeypatch):
    """Sabotage the export (class-logit bias + 1): the check names the model and the difference."""
    real_export = bench_onnx.export

    def sabotaged(view, x, path):
        import copy

        broken = copy.deepcopy(view)  # the export view holds the fused model
        with torch.no_grad():
            broken.model.model[-1].dec_score_head[-1].bias += 1.0
        return real_export(broken, x, path)

    monkeypatch.setattr(bench_onnx, "export", sabotaged)
    with pytest.raises(bench_onnx.OnnxMismatch, match=r"'broken'.*tolerance 0\.001") as info:
        bench([("broken", pair[0][1])], backend="onnxruntime", batch=1, imgsz=IMGSZ, warmup=0, repeats=1)
    diff = float(re.search(r"max abs difference (\S+)", str(info.value)).group(1))
    assert 1e-3 < diff <= 1.0 + 1e-4  # every logit moved by 1; a nearer query can only make it less
    assert isinstance(info.value, UserError)  # the CLI prints it as one line


def test_diff_ignores_query_order_but_not_values():
    """Rows (B, Q, 4 + nc): a permutation of queries is the same model's answer."""
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.rand(2, 30, 4, generator=g), torch.randn(2, 30, 3, generator=g)], -1).double()
    perm = torch.randperm(30, generator=g)
    assert bench_onnx.image_diffs(rows, rows[:, perm]) == [0.0, 0.0]
    moved = rows.clone()
    moved[1, 7, 6] += 5.0  # far from every row
    diffs = bench_onnx.image_diffs(rows, moved)
    assert diffs[0] == 0.0 and diffs[1] >= 1.0
    assert bench_onnx.image_diffs(rows, rows * float("nan")) == [float("inf")] * 2


def test_nan_difference_is_refused():
    with pytest.raises(bench_onnx.OnnxMismatch, match="nan"):
        bench_onnx.check_close("m", float("nan"), 1e-3)


def test_half_on_cpu_is_refused():
    with pytest.raises(UserError, match="CUDA"):
        bench(["rtdetr-tiny"], half=True, device="cpu")


def test_unknown_backend_suggests():
    with pytest.raises(UserError, match="Did you mean 'onnxruntime'"):
        bench(["rtdetr-tiny"], backend="onnxrt")


def _export_and_check(model, x, tmp_path, sabotage=None, atol=1e-3) -> bench_onnx.OutputCheck:
    """Export ``model`` (after ``sabotage`` on a copy, if given) and check it against the intact model."""
    fused = metrics.fused(model)
    exported = copy.deepcopy(fused)
    if sabotage:
        with torch.no_grad():
            sabotage(exported)
    path = bench_onnx.export(family_of(exported).export_module(exported), x, tmp_path / "m.onnx")
    view = family_of(fused).export_module(fused)
    return bench_onnx.check_outputs(bench_onnx.session(path, torch.device("cpu"), 1), view, x, atol)


def _tie_every_anchor(model):
    """Every anchor gets the same encoder score: the query selection is a pure tie."""
    head = model.model[-1]
    with torch.no_grad():
        head.enc_score_head.weight.zero_()
        head.enc_score_head.bias.fill_(0.5)
    return model


def test_tied_query_selection_is_compared_up_to_the_decoder_inputs(pair, tmp_path):
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    clean = _export_and_check(pair[1][1], x, tmp_path)
    assert clean.tied_images == 0 and clean.images == 2 and clean.max_abs_diff <= 1e-4

    def bump_logits(m):
        m.model[-1].dec_score_head[-1].bias += 1.0  # decoder outputs only

    assert _export_and_check(pair[1][1], x, tmp_path, bump_logits).max_abs_diff >= 0.5  # untied: caught
    tied = _tie_every_anchor(copy.deepcopy(pair[1][1]))
    result = _export_and_check(tied, x, tmp_path, bump_logits)
    assert result.tied_images == 2 and result.max_abs_diff <= 1e-4  # a tie: decoder rows not compared

    def bump_projection(m):
        m.model[-1].input_proj[0][1].bias += 1.0  # BatchNorm of the last pruned layer: changes what the decoder gets

    assert _export_and_check(tied, x, tmp_path, bump_projection).max_abs_diff >= 0.5  # tied, still caught
