"""`rtdetr-prune prune` end to end on the tiny model and synthetic data (no finetuning)."""

import csv
import json

import pytest
import torch

from rtdetr_prune.cli import main
from rtdetr_prune.models import load_model

SCHEMA_STAGE = {"params", "gflops", "size_mb", "map50", "map50_95", "latency_ms"}


@pytest.mark.parametrize("method", ["lamp", "group_taylor"])
def test_prune_command_writes_run_directory(data_yaml, tmp_path, capsys, method):
    args = ["prune", "--model", "rtdetr-tiny", "--data", data_yaml, "--method", method, "--speed-up", "1.5",
            "--epochs", "0", "--imgsz", "160", "--batch", "4", "--workers", "0", "--grad-batches", "2",
            "--project", str(tmp_path), "--name", "run", "--sensitivity", "0"]  # the profile: test_sensitivity.py
    assert main(args) == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["method"] == method and report["speed_up_target"] == 1.5
    assert 1.5 <= report["speed_up_achieved"] <= 1.545
    assert set(report["baseline"]) == SCHEMA_STAGE and set(report["pruned"]) == SCHEMA_STAGE
    assert report["finetuned"] is None
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert report["baseline"]["gflops"] / report["pruned"]["gflops"] == pytest.approx(report["speed_up_achieved"], rel=2e-3)
    assert report["pruned"]["map50"] is not None and report["pruned"]["latency_ms"] > 0
    assert all({"layer", "reason"} == set(s) for s in report["skipped"])
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert list(rows[0]) == ["step", "params", "gflops", "speed_up"]
    assert int(rows[-1]["step"]) == report["steps"] and float(rows[0]["speed_up"]) == 1.0
    model = load_model(run / "weights" / "pruned.pt")
    assert model(torch.zeros(1, 3, 160, 160))[0].shape == (1, 30, 6)
    assert (run / "recipe.yaml").is_file() and (run / "report.md").is_file()
    assert "Pruned" in capsys.readouterr().out

    assert main(args) == 0  # the same name again: a new directory, the first run untouched
    assert (tmp_path / "run2" / "report.json").is_file()


def test_prune_rejects_class_count_mismatch(data_yaml, tmp_path, capsys):
    wrong = tmp_path / "wrong.pt"
    from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint

    save_checkpoint(load_model("rtdetr-tiny", nc=5), wrong)
    code = main(["prune", "--model", str(wrong), "--data", data_yaml, "--epochs", "0", "--project", str(tmp_path)])
    assert code == 2 and "5 classes" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists(), "nothing written for a rejected run"


def test_python_api_and_safe_format(data_yaml, tmp_path, capsys):
    import rtdetr_prune

    report = rtdetr_prune.prune(model="rtdetr-tiny", data=data_yaml, method="l1", speed_up=1.4, epochs=0, imgsz=160,
                                batch=4, workers=0, latency=False, project=str(tmp_path), name="api", sensitivity=0)
    assert 1.4 <= report["speed_up_achieved"] <= 1.4 * 1.03 and report["pruned"]["latency_ms"] is None
    safe = tmp_path / "api" / "weights" / "pruned_safe"
    assert (safe / "model.json").is_file() and (safe / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["val", "--model", str(safe), "--data", data_yaml, "--imgsz", "160", "--workers", "0"]) == 0
    assert f"{report['pruned']['map50']:.4f}" in capsys.readouterr().out  # the safe copy scores like the .pt


def test_same_seed_same_pruned_channels(data_yaml, tmp_path):
    import rtdetr_prune
    from rtdetr_prune.models import load_model
    from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint

    start = save_checkpoint(load_model("rtdetr-tiny", nc=3), tmp_path / "start.pt")
    states = []
    for name in ("a", "b"):
        rtdetr_prune.prune(model=str(start), data=data_yaml, method="group_taylor", speed_up=1.4, epochs=0,
                           imgsz=160, batch=4, workers=0, grad_batches=2, latency=False, val=False, seed=7,
                           project=str(tmp_path), name=name)
        states.append(load_model(tmp_path / name / "weights" / "pruned.pt").state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
