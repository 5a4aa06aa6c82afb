"""The decoder and latency-target benchmark scripts run end to end on the tiny model (no assertion on speed)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_latency_target_runs_on_the_tiny_model(tmp_path, capsys):
    import latency_target

    result = latency_target.main(["--model", "rtdetr-tiny", "--nc", "3", "--imgsz", "64", "--batch", "1",
                                  "--targets", "1.3", "--backends", "torch", "--warmup", "0", "--repeats", "1",
                                  "--check-repeats", "1", "--out", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == result["headline"]
    row = result["rows"][0]
    assert 1 <= len(row["evaluations"]) <= 4 and row["gflops_speed_up"] > 1
    assert all(1 <= len(e["timings"]) <= 2 and e["timings"][0]["rounds"] >= 1 for e in row["evaluations"])
    assert row["within"] == (abs(row["remeasured"] / 1.3 - 1) <= 0.05)
    assert json.loads((tmp_path / "latency_target.json").read_text())["headline"] == result["headline"]


def test_latency_vs_flops_compares_decoder_part_sets(tmp_path):
    import latency_vs_flops

    result = latency_vs_flops.main(["--model", "rtdetr-tiny", "--nc", "3", "--imgsz", "64", "--batch", "1",
                                    "--methods", "l1", "--targets", "1.3", "--backends", "torch", "--warmup", "0",
                                    "--repeats", "1", "--threads", "1", "--profile", "", "--round-to", "8",
                                    "--decoder-parts", "none;memory,value", "--out", str(tmp_path)])
    labels = [r["model"] for r in result["backends"]["torch, 1 thread"]["rows"]]
    assert labels == ["base", "l1 1.3x [none]", "l1 1.3x [memory,value]"]


@pytest.mark.slow
def test_decoder_accuracy_runs_on_the_demo_model(tmp_path):
    import decoder_accuracy

    result = decoder_accuracy.main(["--target", "gflops", "--speed-up", "1.3", "--epochs", "1", "--seeds", "1",
                                    "--arms", "none;memory,value", "--workdir", str(tmp_path / "runs"),
                                    "--out", str(tmp_path)])
    assert [r["arm"] for r in result["rows"]] == ["none", "memory,value"]
    assert all(r["retention"] >= 0 for r in result["rows"])
    assert [a["retention"]["n"] for a in result["summary"]] == [1, 1]


def test_decoder_accuracy_compares_each_arm_with_the_first_on_the_same_seed():
    import decoder_accuracy

    rows = [{"arm": a, "seed": s, "retention": r, "gflops_speed_up": 2.0, "measured_speed_up": None, "minutes": 1.0}
            for a, s, r in [("none", 0, 0.80), ("none", 1, 0.60), ("all", 0, 0.85), ("all", 1, 0.66)]]
    summary = {a["arm"]: a for a in decoder_accuracy.summarize(rows, ["none", "all"])}
    assert summary["none"]["retention"]["mean"] == pytest.approx(0.70)
    assert summary["none"]["vs_first"]["values"] == [0.0, 0.0]
    assert summary["all"]["vs_first"]["values"] == pytest.approx([0.05, 0.06])  # paired, not 0.755 - 0.70 per run
    assert summary["all"]["measured_speed_up"] is None
