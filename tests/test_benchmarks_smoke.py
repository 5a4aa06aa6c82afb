"""The benchmark scripts run end to end on the tiny model at tiny sizes, write their JSON and markdown,
and print their headline last; the stopwatch splits time exclusively. No assertion depends on real speed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from stopwatch import Stopwatch  # noqa: E402


class Clock:
    """A fake clock that advances only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_stopwatch_charges_nested_calls_to_their_own_stage():
    clock = Clock()
    watch = Stopwatch(clock)

    def inner():
        clock.now += 2.0

    def outer():
        clock.now += 1.0
        ns.inner()
        clock.now += 0.5

    ns = type("ns", (), {})()
    ns.inner, ns.outer = inner, outer
    with watch.patched([(ns, "inner", "in"), (ns, "outer", "out")]):
        ns.outer()
        ns.inner()
    assert watch.seconds == {"in": 4.0, "out": 1.5}
    assert watch.calls == {"in": 2, "out": 1}
    assert ns.inner is inner and ns.outer is outer  # put back


def test_stopwatch_refuses_a_missing_target():
    with pytest.raises(AttributeError, match="gone"):
        with Stopwatch().patched([(json, "no_such_function", "x")]):
            pass


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_engine_cost_runs_on_the_tiny_model(tmp_path, capsys):
    import engine_cost

    result = engine_cost.main(["--model", "rtdetr-tiny", "--nc", "3", "--imgsz", "64", "--speed-up", "1.3",
                               "--methods", "lamp,group_taylor", "--batch", "2", "--grad-batches", "1",
                               "--images", "8", "--threads", "1", "--out", str(tmp_path)])
    assert _last_line(capsys) == result["headline"] and result["headline"].startswith("engine cost")
    for row in result["rows"]:
        assert sum(row["seconds"].values()) == pytest.approx(row["total_s"])
        assert row["seconds"]["graph build"] > 0 and row["seconds"]["FLOP counting"] > 0
    assert result["rows"][0]["seconds"]["gradient batches"] == 0 < result["rows"][1]["seconds"]["gradient batches"]
    assert json.loads((tmp_path / "engine_cost.json").read_text())["headline"] == result["headline"]
    assert "| lamp |" in (tmp_path / "engine_cost.md").read_text()


def test_latency_vs_flops_runs_on_the_tiny_model(tmp_path, capsys):
    import latency_vs_flops

    result = latency_vs_flops.main(["--model", "rtdetr-tiny", "--nc", "3", "--imgsz", "64", "--batch", "1",
                                    "--methods", "lamp", "--targets", "1.3", "--backends", "torch", "--warmup", "0",
                                    "--repeats", "1", "--threads", "1", "--profile", "lamp 1.3x",
                                    "--out", str(tmp_path)])
    assert _last_line(capsys) == result["headline"]
    row = result["backends"]["torch, 1 thread"]["rows"][1]
    assert row["latency_over_gflops"] == pytest.approx(row["latency_ratio"] / row["gflops_ratio"])
    assert row["speedup_efficiency"] == pytest.approx(1 / row["latency_over_gflops"])
    regions = result["profiles"]["lamp 1.3x"]["base"]["regions"]
    assert set(regions) == {"backbone", "AIFI", "encoder (CCFF)", "decoder"}
    assert (tmp_path / "latency_vs_flops.md").is_file()


def test_gpu_latency_says_clearly_when_there_is_no_gpu(capsys):
    import gpu_latency
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as e:
        gpu_latency.main([])
    assert e.value.code != 0
    assert "no CUDA GPU" in capsys.readouterr().err


def test_onnxruntime_region_profile_attributes_nodes_to_regions():
    import torch
    from latency_vs_flops import ort_region_profile

    from rtdetr_prune.models import load_model

    torch.manual_seed(0)
    prof = ort_region_profile(load_model("rtdetr-tiny", nc=3), imgsz=64, batch=1, threads=1, repeats=1)
    assert set(prof) == {"backbone", "AIFI", "encoder (CCFF)", "decoder", "other"}
    assert all(prof[r]["ms"] > 0 for r in ("backbone", "AIFI", "encoder (CCFF)", "decoder"))
    assert prof["other"]["ms"] < sum(v["ms"] for v in prof.values()) / 2  # most nodes carry a layer's name
    for region in prof.values():  # the per-operator split adds up to the region's time
        assert abs(sum(region["ops"].values()) - region["ms"]) < 1e-6 * max(1.0, region["ms"])
    assert prof["backbone"]["ops"]["Conv"] > 0 and "GridSample" in prof["decoder"]["ops"]


def test_onnxruntime_op_rows_charge_time_beyond_the_gflops_cut():
    from latency_vs_flops import ort_op_rows

    base = {"backbone": {"ms": 30.0, "ops": {"Conv": 20.0, "Relu": 10.0}}}
    pruned = {"backbone": {"ms": 18.0, "ops": {"Conv": 10.0, "Relu": 8.0}}}
    rows = ort_op_rows(base, pruned, gflops_speedup=2.0)
    assert [r[0] for r in rows] == ["Conv", "Relu"]  # costliest in the pruned model first
    assert rows[0][3] == "2.00x" and rows[0][5] == "+0.0"  # Conv shrank with the GFLOPs
    assert rows[1][5] == "+3.0"  # Relu: 8 ms where a 2x cut would leave 5


def test_ort_session_options_times_every_variant_on_the_tiny_model(tmp_path):
    import ort_session_options

    result = ort_session_options.main(["--variants", "default,no-arena", "--passes", "1", "--model", "rtdetr-tiny",
                                       "--nc", "3", "--imgsz", "64", "--batch", "1", "--methods", "lamp",
                                       "--targets", "1.3", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)])
    rows = result["rows"]
    assert [(r["variant"], r["model"]) for r in rows] == [("default", "base"), ("default", "lamp 1.3x"),
                                                          ("no-arena", "base"), ("no-arena", "lamp 1.3x")]
    assert all(r["latency_ratio"] == 1.0 and r["gflops_ratio"] == 1.0 for r in rows if r["model"] == "base")
    pruned = rows[1]
    assert pruned["gflops_ratio"] < 1 and pruned["latency_over_gflops"] == pytest.approx(
        pruned["latency_ratio"] / pruned["gflops_ratio"])
    assert (tmp_path / "ort_session_options.md").is_file()


def test_ort_session_options_refuses_an_unknown_variant():
    import ort_session_options

    for bad in (["--variants", "turbo"], ["--variants", ","], ["--passes", "0"]):
        with pytest.raises(SystemExit):
            ort_session_options.parse_args(bad)
