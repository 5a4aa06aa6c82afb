"""End to end: sparse and plain methods, finetuning, reports, compare; and runs killed at each stage resume."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rtdetr_prune.cli import main

STAGES = ("params", "gflops", "size_mb", "map50", "map50_95", "latency_ms")


def _args(data_yaml, project, name, method, *extra):
    return ["prune", "--model", "rtdetr-tiny", "--data", data_yaml, "--method", method, "--speed-up", "1.5",
            "--imgsz", "160", "--batch", "4", "--workers", "0", "--project", str(project), "--name", name,
            "--sensitivity", "0", *extra]  # each run here tests stages and resume; the profile: test_sensitivity.py


def test_sparse_and_plain_methods_end_to_end_then_compare(data_yaml, tmp_path, capsys):
    assert main(_args(data_yaml, tmp_path, "slim", "slim", "--sparse-epochs", "1", "--epochs", "1")) == 0
    assert main(_args(data_yaml, tmp_path, "lamp", "lamp", "--epochs", "1", "--sensitivity", "8")) == 0
    for name in ("slim", "lamp"):
        run = tmp_path / name
        report = json.loads((run / "report.json").read_text())
        for stage in ("baseline", "pruned", "finetuned"):
            assert set(report[stage]) == set(STAGES) and report[stage]["map50"] is not None, (name, stage)
        assert report["pruned"]["params"] == report["finetuned"]["params"], "finetuning kept the pruned widths"
        for f in ("report.md", "curve.png", "recipe.yaml", "history.csv", "weights/pruned.pt"):
            assert (run / f).is_file(), (name, f)
    assert (tmp_path / "slim" / "sparse" / "sparsity.csv").is_file()
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "slim"), str(tmp_path / "lamp"), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "slim" in table and "lamp" in table
    assert (tmp_path / "compare.csv").read_text().count("\n") >= 3  # header, baseline, two runs


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "rtdetr_prune", *args]


def _kill_when(cmd, ready, timeout=240) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true (a real crash: no cleanup runs)."""
    env = {**os.environ, "RTDETR_PRUNE_QUIET": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.time() < deadline, "kill point never reached"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _csv_rows(path: Path) -> int:
    return max(0, len(path.read_text().strip().splitlines()) - 1) if path.is_file() else 0


def _resume_and_check(run: Path) -> dict:
    subprocess.run(_cli("prune", "--resume", str(run)), check=True, env={**os.environ, "RTDETR_PRUNE_QUIET": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    report = json.loads((run / "report.json").read_text())
    assert report["finetuned"] is not None and report["finetuned"]["params"] == report["pruned"]["params"]
    assert not list(run.rglob(".*.tmp")), "no half-written files"
    return report


def test_killed_during_pruning_steps_resumes(data_yaml, tmp_path):
    run = tmp_path / "run"
    cmd = _cli(*_args(data_yaml, tmp_path, "run", "l1", "--epochs", "1", "--step-ratio", "0.02", "--speed-up", "2",
                      "--round-to", "8"))  # rtdetr-tiny is too narrow for 2x in the default units of 16
    _kill_when(cmd, lambda: _csv_rows(run / "history.csv") >= 3)
    assert not (run / "weights" / "pruned.pt").exists()
    assert _csv_rows(run / "history.csv") >= 3  # the steps done so far are on disk, complete rows
    report = _resume_and_check(run)
    assert 2.0 <= report["speed_up_achieved"] <= 2.06


def test_killed_during_finetune_resumes_at_its_epoch(data_yaml, tmp_path):
    run = tmp_path / "run"
    cmd = _cli(*_args(data_yaml, tmp_path, "run", "lamp", "--epochs", "3"))
    results = run / "finetune" / "results.csv"
    _kill_when(cmd, lambda: _csv_rows(results) >= 1 and (run / "finetune" / "weights" / "last.pt").is_file())
    pruned = _sha(run / "weights" / "pruned.pt")
    epochs_done = _csv_rows(results)
    _resume_and_check(run)
    assert _sha(run / "weights" / "pruned.pt") == pruned, "a finished stage is never redone"
    epochs = [int(float(line.split(",")[0])) for line in results.read_text().strip().splitlines()[1:]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3 and len(epochs) == 3, epochs  # continued, not restarted
    assert epochs_done >= 1


def test_killed_during_sparse_training_resumes_at_its_epoch(data_yaml, tmp_path):
    run = tmp_path / "run"
    cmd = _cli(*_args(data_yaml, tmp_path, "run", "group_slim", "--sparse-epochs", "3", "--epochs", "1"))
    results = run / "sparse" / "results.csv"
    _kill_when(cmd, lambda: _csv_rows(results) >= 1 and (run / "sparse" / "weights" / "last.pt").is_file())
    state = json.loads((run / "state.json").read_text())
    assert "baseline" in state and "sparse" not in state
    first_epoch = results.read_text().splitlines()[1]  # includes its wall time: a restart would rewrite it
    report = _resume_and_check(run)
    assert results.read_text().splitlines()[1] == first_epoch
    kept = {k: v for k, v in report["baseline"].items() if k != "latency_ms"}  # latency: timed at the end, side by side
    assert kept == {k: v for k, v in state["baseline"].items() if k != "latency_ms"}, "the baseline stage is kept"
    epochs = [int(float(line.split(",")[0])) for line in results.read_text().strip().splitlines()[1:]]
    assert epochs == [1, 2, 3], epochs  # continued, not restarted
    sparsity = (run / "sparse" / "sparsity.csv").read_text().strip().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in sparsity] == [1, 2, 3]  # the log kept its first rows


def test_training_finished_but_not_recorded_is_reused(data_yaml, tmp_path):
    """Killed after finetuning ended but before its stage was recorded: resume takes the finished run."""
    assert main(_args(data_yaml, tmp_path, "run", "l1", "--epochs", "1", "--no-latency")) == 0
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    best = _sha(Path(state["finetuned"]["checkpoint"]))
    del state["finetuned"]
    (run / "state.json").write_text(json.dumps(state))
    _resume_and_check(run)
    resumed = json.loads((run / "state.json").read_text())["finetuned"]["checkpoint"]
    assert _sha(Path(resumed)) == best and _csv_rows(run / "finetune" / "results.csv") == 1  # not trained again


def test_resume_rejects_a_non_run_directory(tmp_path, capsys):
    assert main(["prune", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_sparse_epochs_0_prunes_the_given_model_and_says_so(data_yaml, tmp_path, caplog):
    """--sparse-epochs 0 with a sparse method: no sparse training (Ultralytics refuses epochs=0), the model as
    given is pruned, and the report and the log say so."""
    import logging

    argv = _args(data_yaml, tmp_path, "run", "slim", "--sparse-epochs", "0", "--epochs", "0", "--no-latency",
                 "--no-val")
    with caplog.at_level(logging.WARNING, logger="rtdetr_prune"):
        assert main(argv) == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["speed_up_achieved"] >= 1.5
    assert len(report["notes"]) == 1 and "without sparse training" in report["notes"][0], report["notes"]
    assert "without sparse training" in (run / "report.md").read_text()
    assert "without sparse training" in caplog.text
    assert not (run / "sparse").exists(), "no sparse training run"
    assert "checkpoint" not in json.loads((run / "state.json").read_text())["sparse"]
