"""benchmarks/transformers_accuracy.py: its arithmetic, its argument checks, and (slow) one tiny run end to end
that a second invocation continues from instead of training again."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import transformers_accuracy as bench  # noqa: E402


def test_curve_gives_the_best_score_in_each_part_of_training(tmp_path):
    csv = tmp_path / "results.csv"
    maps = [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.5, 0.49, 0.5]
    csv.write_text("epoch,metrics/mAP50-95(B)\n" + "".join(f"{i},{m}\n" for i, m in enumerate(maps)))
    assert bench.curve(csv) == [0.3, 0.4, 0.5, 0.5, 0.5]


def test_summary_is_the_mean_over_seeds_and_the_bar_is_95_percent():
    s = bench.summarize([{"retention": 0.90}, {"retention": 1.00}])
    assert s["retention_mean"] == pytest.approx(0.95) and s["passes"]
    assert (s["retention_min"], s["retention_max"], s["seeds"]) == (0.90, 1.00, 2)
    assert s["ci"]["mean"] == pytest.approx(0.95) and s["ci"]["half_width"] > 0.05  # two seeds 10 points apart
    assert not bench.summarize([{"retention": 0.94}])["passes"]


def test_a_sparse_method_needs_room_for_sparse_epochs_and_unknown_methods_fail_early():
    with pytest.raises(SystemExit):
        bench.parse_args(["--method", "group_reg", "--epochs", "5", "--sparse-epochs", "5"])
    with pytest.raises(Exception, match="lampp|lamp"):
        bench.parse_args(["--method", "lampp"])
    args = bench.parse_args(["--method", "lamp, group_reg", "--seeds", "0,2"])
    assert args.methods == ["lamp", "group_reg"] and args.seeds == [0, 2]


@pytest.mark.slow
def test_transformers_accuracy_runs_and_a_rerun_reuses_its_pieces(tmp_path):
    argv = ["--base-epochs", "1", "--epochs", "2", "--sparse-epochs", "1", "--seeds", "0", "--train", "8",
            "--select", "4", "--test", "8", "--method", "lamp", "--workdir", str(tmp_path / "w"),
            "--out", str(tmp_path / "out"), "--threads", "1"]
    first = bench.main(argv)
    row = first["methods"]["lamp"]["rows"][0]
    assert row["speed_up"] == pytest.approx(1.5, rel=0.03)
    control = row["control"][1]
    assert row["retention"] == (row["finetuned_test"][1] / control if control else 0.0)
    saved = json.loads((tmp_path / "out" / "transformers_accuracy_lamp.json").read_text())
    assert saved["methods"]["lamp"]["summary"]["seeds"] == 1
    pieces = sorted((tmp_path / "w").rglob("rows/*.json"))
    assert [p.name for p in pieces] == ["control-seed0.json", "lamp-seed0.json"]
    stamps = [p.stat().st_mtime_ns for p in pieces]
    second = bench.main(argv)  # every piece is on disk: nothing is trained again
    assert [p.stat().st_mtime_ns for p in pieces] == stamps
    assert list(second["methods"]["lamp"]["rows"][0]["finetuned_test"]) == list(row["finetuned_test"])
