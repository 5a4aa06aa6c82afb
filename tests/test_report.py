"""Reports: exact table strings against the seed README's published numbers, nulls, files, compare."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import pytest

from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import atomic_path, write_text
from rtdetr_prune.report import compare_runs, plot_curve, stage_table, write_compare, write_report_md
from rtdetr_prune.report.table import map_delta

# VisDrone2019 RT-DETR-R18 baseline and "LAMP exp1" from the seed README (latency 0.00305 s and
# 0.00247 s per image = 3.05 and 2.47 ms). Model sizes are invented: the seed omits them.
BASELINE = {"params": 19_884_600, "gflops": 57.0, "size_mb": 76.1, "map50": 0.377,
            "map50_95": 0.219, "latency_ms": 3.05}
LAMP_EXP1 = {"params": 13_458_528, "gflops": 36.6, "size_mb": 51.6, "map50": 0.356,
             "map50_95": 0.205, "latency_ms": 2.47}
PRUNED = {"params": 13_458_528, "gflops": 36.6, "size_mb": 51.6, "map50": 0.301,
          "map50_95": 0.170, "latency_ms": 2.47}

HEADER = "| model | Params | GFLOPs | Model Size (MB) | mAP50 | mAP50-95 | Inference Time (bs 8, ms/img) |"
BASELINE_ROW = "| Baseline | 19,884,600 | 57.0 | 76.1 | 0.377 | 0.219 | 3.05 |"


def make_report(**overrides) -> dict:
    report = {"method": "lamp", "speed_up_target": 1.5, "speed_up_achieved": 1.557, "steps": 12,
              "skipped": [], "baseline": dict(BASELINE), "pruned": dict(PRUNED),
              "finetuned": dict(LAMP_EXP1)}
    report.update(copy.deepcopy(overrides))
    return report


def make_run(root, name, report=None, history=True):
    run = root / name
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(report if report is not None else make_report()))
    if history:
        (run / "history.csv").write_text("step,params,gflops,speed_up\n0,19884600,57.0,1.0\n"
                                         "1,17000000,48.1,1.185\n2,13458528,36.6,1.557\n")
    return run


def test_stage_table_reproduces_seed_lamp_exp1():
    assert stage_table(make_report()) == "\n".join([
        "Method lamp: target speed-up 1.50x, achieved 1.56x in 12 pruning steps.",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|",
        BASELINE_ROW,
        "| Pruned | 13,458,528 (67.7%) | 36.6 (64.2%) | 51.6 (67.8%) | 0.301 (-0.076) | 0.170 (-0.049) | 2.47 (81.0%) |",
        "| Finetuned | 13,458,528 (67.7%) | 36.6 (64.2%) | 51.6 (67.8%) | 0.356 (-0.021) | 0.205 (-0.014) | 2.47 (81.0%) |",
    ])


def test_finetuned_null_or_missing_drops_the_row():
    with_null = make_report(finetuned=None)
    without = make_report()
    del without["finetuned"]
    for report in (with_null, without):
        table = stage_table(report)
        assert "| Pruned |" in table and "Finetuned" not in table
        assert len(table.splitlines()) == 2 + 2 + 2  # caption, blank, header, rule, two rows


def test_nulls_print_dash_and_drop_unmeasurable_notes():
    base = dict(BASELINE, map50=None, map50_95=None, latency_ms=None)
    pruned = dict(PRUNED, size_mb=None, latency_ms=None)
    table = stage_table(make_report(baseline=base, pruned=pruned, finetuned=None))
    assert "| Baseline | 19,884,600 | 57.0 | 76.1 | - | - | - |" in table
    # mAP measured after pruning but not before: the value without a change, not a made-up one.
    assert "| Pruned | 13,458,528 (67.7%) | 36.6 (64.2%) | - | 0.301 | 0.170 | - |" in table


def test_map_delta_is_signed_never_negative_zero_and_matches_printed_values():
    assert map_delta(0.730, 0.730) == "+0.000"  # seed SeaShips LAMP row
    assert map_delta(0.2186, 0.2194) == "+0.000"  # both print as 0.219: no -0.000
    assert map_delta(0.739, 0.730) == "+0.009"
    # Whatever the raw values, the printed change is the difference of the printed values.
    for i in range(500):
        value, base = (i * 0.0137) % 1, (i * 0.0291 + 0.0005) % 1
        delta = float(map_delta(value, base))
        assert delta == pytest.approx(float(f"{value:.3f}") - float(f"{base:.3f}"), abs=1e-9)


def test_extra_keys_are_tolerated():
    report = make_report(git_sha="abc", baseline=dict(BASELINE, imgsz=640))
    assert BASELINE_ROW in stage_table(report)


@pytest.mark.parametrize("broken", [
    {"pruned": None}, {"speed_up_target": "1.5x"}, {"baseline": dict(BASELINE, params=None)},
    {"pruned": dict(PRUNED, map50="0.3")}, {"skipped": "conv1"},
])
def test_malformed_report_raises_user_error(broken):
    with pytest.raises(UserError):
        stage_table(make_report(**broken))


def test_write_report_md_writes_table_skipped_layers_and_curve(tmp_path):
    report = make_report(skipped=[{"layer": "model.0.conv", "reason": "stem | grouped"}])
    run = make_run(tmp_path, "exp1", report)
    out = write_report_md(run)
    text = out.read_text()
    assert out == run / "report.md"
    assert stage_table(report) in text
    assert "## Skipped layers" in text and "- `model.0.conv`: stem \\| grouped" in text
    assert "![Pruning curve](curve.png)" in text
    assert (run / "curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in run.iterdir()) == ["curve.png", "history.csv", "report.json",
                                                     "report.md"]  # no temp files left behind


def test_write_report_md_without_history_or_skips(tmp_path):
    run = make_run(tmp_path, "exp1", history=False)
    text = write_report_md(run).read_text()
    assert "Skipped layers" not in text
    assert "curve.png" not in text and "no pruning curve" in text
    assert not (run / "curve.png").exists()


def test_plot_curve_writes_a_png(tmp_path):
    from matplotlib.image import imread

    run = make_run(tmp_path, "exp1")
    out = plot_curve(run / "history.csv", tmp_path / "plots" / "curve.png")
    assert out.stat().st_size > 1000
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize("text", ["step,params,gflops\n0,1,1\n", "step,params,gflops,speed_up\n",
                                  "step,params,gflops,speed_up\n0,1,x,1\n"])
def test_plot_curve_rejects_bad_history(tmp_path, text):
    (tmp_path / "history.csv").write_text(text)
    with pytest.raises(UserError, match="history.csv"):
        plot_curve(tmp_path / "history.csv", tmp_path / "curve.png")
    assert not (tmp_path / "curve.png").exists()


def test_compare_two_runs_shares_one_baseline(tmp_path):
    ft = make_run(tmp_path, "lamp_exp1")
    not_ft = make_run(tmp_path, "l1_exp2", make_report(method="l1", finetuned=None))
    markdown, csv_text = compare_runs([ft, not_ft])
    lines = markdown.splitlines()
    assert lines[0] == ("| run | method | stage | Params | GFLOPs | Model Size (MB) | mAP50 | mAP50-95 | "
                        "Inference Time (bs 8, ms/img) |")
    assert lines[2:] == [
        "| Baseline | - | baseline | 19,884,600 | 57.0 | 76.1 | 0.377 | 0.219 | 3.05 |",
        "| lamp_exp1 | lamp | finetuned | 13,458,528 (67.7%) | 36.6 (64.2%) | 51.6 (67.8%) | 0.356 (-0.021) | 0.205 (-0.014) | 2.47 (81.0%) |",
        "| l1_exp2 | l1 | pruned | 13,458,528 (67.7%) | 36.6 (64.2%) | 51.6 (67.8%) | 0.301 (-0.076) | 0.170 (-0.049) | 2.47 (81.0%) |",
    ]
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert list(rows[0]) == ["run", "method", "stage", "params", "params_pct", "gflops", "gflops_pct",
                             "size_mb", "size_pct", "map50", "map50_delta", "map50_95",
                             "map50_95_delta", "latency_ms", "latency_pct"]
    assert [r["run"] for r in rows] == ["Baseline", "lamp_exp1", "l1_exp2"]
    assert rows[1]["params"] == "13458528" and rows[1]["params_pct"] == "67.7"
    assert rows[1]["map50_delta"] == "-0.021" and rows[0]["map50_delta"] == ""


def test_compare_different_baselines_gets_one_baseline_row_per_run(tmp_path):
    other_base = dict(BASELINE, params=19_874_328, gflops=56.9, map50=None)
    a = make_run(tmp_path, "visdrone")
    b = make_run(tmp_path, "crowdhuman", make_report(baseline=other_base))
    markdown, csv_text = compare_runs([a, b])
    assert [r["run"] for r in csv.DictReader(io.StringIO(csv_text))] == [
        "visdrone baseline", "visdrone", "crowdhuman baseline", "crowdhuman"]
    assert "| crowdhuman baseline | lamp | baseline | 19,874,328 | 56.9 | 76.1 | - |" in markdown
    assert "| crowdhuman | lamp | finetuned | 13,458,528 (67.7%) | 36.6 (64.3%) |" in markdown
    assert "different baselines" in markdown.splitlines()[-1]


def test_compare_names_duplicate_directories_by_parent(tmp_path):
    markdown, _ = compare_runs([make_run(tmp_path / "a", "exp"), make_run(tmp_path / "b", "exp")])
    assert "| a/exp | lamp |" in markdown and "| b/exp | lamp |" in markdown


def test_compare_rejects_missing_or_malformed_report(tmp_path):
    good = make_run(tmp_path, "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no report.json"):
        compare_runs([good, tmp_path / "empty"])
    with pytest.raises(UserError, match="does not exist"):
        compare_runs([tmp_path / "typo"])
    bad = make_run(tmp_path, "bad")
    (bad / "report.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        compare_runs([good, bad])
    with pytest.raises(UserError, match="at least one"):
        compare_runs([])


def test_write_compare_writes_both_files(tmp_path):
    runs = [make_run(tmp_path, "exp1"), make_run(tmp_path, "exp2")]
    markdown = write_compare(runs, tmp_path / "cmp")
    assert (tmp_path / "cmp" / "compare.md").read_text() == markdown + "\n"
    assert (tmp_path / "cmp" / "compare.csv").read_text() == compare_runs(runs)[1]
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.csv", "compare.md"]


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.md"
    write_text(target, "old\n")

    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        Path(tmp).write_text("ne")
        raise OSError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
