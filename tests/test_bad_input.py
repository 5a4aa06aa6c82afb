"""Every user mistake: one line naming the problem and the fix, exit status 2, no traceback, nothing written."""

from pathlib import Path

import pytest
import torch
import yaml

from rtdetr_prune.cli import main
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_yaml):
    d = tmp_path_factory.mktemp("bad")
    good = save_checkpoint(load_model("rtdetr-tiny", nc=3), d / "good.pt")
    (d / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.checks import check_yaml

    torch.save({"model": DetectionModel(check_yaml("yolov8.yaml"), nc=3, verbose=False)}, d / "yolo.pt")
    (d / "malformed.yaml").write_text("train: [unclosed\n  names: {0: a")
    data = yaml.safe_load(Path(data_yaml).read_text())
    (d / "missing_images.yaml").write_text(yaml.safe_dump({**data, "val": "images/nowhere"}))
    empty = d / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "images" / "val").mkdir(parents=True)
    (d / "empty.yaml").write_text(yaml.safe_dump({"path": str(empty), "train": "images/train", "val": "images/val",
                                                  "names": {0: "a", 1: "b", 2: "c"}}))
    (d / "five_classes.yaml").write_text(yaml.safe_dump({**data, "nc": 5, "names": {i: str(i) for i in range(5)}}))
    (d / "recipe_typo.yaml").write_text("speedup: 2\n")
    for key in NAN_KEYS:
        (d / f"nan_{key}.yaml").write_text(f"{key}: .nan\n")
    (d / "batch_1e9.yaml").write_text("batch: 1000000000\n")
    return d


def _prune(files, data_yaml, *extra, model=None, data=None):
    return ["prune", "--model", str(model or files / "good.pt"), "--data", str(data or data_yaml),
            "--imgsz", "160", "--epochs", "0", "--project", str(files / "out"), *extra]


CASES = {
    "missing checkpoint": (lambda f, d: _prune(f, d, model=f / "nope.pt"), "not found"),
    "truncated checkpoint": (lambda f, d: _prune(f, d, model=f / "truncated.pt"), "could not be loaded"),
    "corrupt checkpoint": (lambda f, d: _prune(f, d, model=f / "corrupt.pt"), "could not be loaded"),
    "not an RT-DETR": (lambda f, d: _prune(f, d, model=f / "yolo.pt"), "not an RT-DETR"),
    "missing data yaml": (lambda f, d: _prune(f, d, data=f / "nope.yaml"), "not found"),
    "malformed data yaml": (lambda f, d: _prune(f, d, data=f / "malformed.yaml"), "not usable"),
    "data points to missing images": (lambda f, d: _prune(f, d, data=f / "missing_images.yaml"), "missing path"),
    "empty dataset": (lambda f, d: _prune(f, d, data=f / "empty.yaml"), "has no images"),
    "class count mismatch": (lambda f, d: _prune(f, d, data=f / "five_classes.yaml"), "3 classes"),
    "speed-up not above 1": (lambda f, d: _prune(f, d, "--speed-up", "1.0"), "greater than 1"),
    "speed-up out of reach": (lambda f, d: _prune(f, d, "--speed-up", "40"), "at most"),
    "unknown method": (lambda f, d: _prune(f, d, "--method", "lmap"), "Did you mean 'lamp'"),
    "unknown option in recipe": (lambda f, d: _prune(f, d, "--config", str(f / "recipe_typo.yaml")),
                                 "Did you mean 'speed_up'"),
    "imgsz not a multiple of 32": (lambda f, d: _prune(f, d, "--imgsz", "100"), "multiple of 32"),
    "negative reg": (lambda f, d: _prune(f, d, "--reg", "-0.1"), "--reg must be between"),
    "absurd reg": (lambda f, d: _prune(f, d, "--reg", "50"), "--reg must be between"),
    "missing device": (lambda f, d: _prune(f, d, "--device", "3"), "no CUDA GPU"),
    # a project path below a regular file cannot be created, even by root (chmod would not stop root)
    "unwritable output": (lambda f, d: [*_prune(f, d)[:-1], str(f / "good.pt" / "runs")], "writable"),
    "check: missing model": (lambda f, d: ["check", "--model", str(f / "nope.pt")], "not found"),
    "check: round-to 0": (lambda f, d: ["check", "--model", str(f / "good.pt"), "--round-to", "0"], "at least 1"),
    "prune: round-to 0": (lambda f, d: _prune(f, d, "--round-to", "0"), "at least 1"),
    "val: class mismatch": (lambda f, d: ["val", "--model", str(f / "good.pt"), "--data", str(f / "five_classes.yaml"),
                                          "--imgsz", "160"], "3 classes"),
    "resume: not a run": (lambda f, d: ["prune", "--resume", str(f)], "not a run directory"),
}

# Every numeric option at 0, negative and absurd values (1e9, NaN): refused, or (when the value is legitimate, as
# --epochs 0, --workers 1e9 or --max-steps 1e9) not listed here. Ultralytics clamps workers to the CPU count, and
# max-steps and grad-batches are upper limits.
BIG, HUGE_IMGSZ = "1000000000", str(2**30)  # 2**30 is a multiple of 32: only the upper bound refuses it
NAN_KEYS = ("speed_up", "step_ratio", "max_layer_ratio", "tolerance", "reg", "delta_reg", "epochs")
PRUNE_FLAGS = [
    ("--speed-up", "0", "greater than 1"), ("--speed-up", "-1", "greater than 1"),
    ("--speed-up", "1e9", "out of reach"), ("--speed-up", "nan", "finite number"),
    ("--max-steps", "0", "at least 1"), ("--max-steps", "-1", "at least 1"), ("--max-steps", "nan", "invalid int"),
    ("--step-ratio", "0", "between 0 and 1"), ("--step-ratio", "-1", "between 0 and 1"),
    ("--step-ratio", "1e9", "between 0 and 1"),
    ("--round-to", "-1", "at least 1"), ("--round-to", BIG, "out of reach"),
    ("--max-layer-ratio", "0", "between 0 and 1"), ("--max-layer-ratio", "-1", "between 0 and 1"),
    ("--max-layer-ratio", "1e9", "between 0 and 1"),
    ("--tolerance", "-1", "between 0 and 1"), ("--tolerance", "1e9", "between 0 and 1"),
    ("--grad-batches", "0", "at least 1"), ("--grad-batches", "-1", "at least 1"),
    ("--epochs", "-1", "from 0 to 10000"), ("--epochs", BIG, "from 0 to 10000"), ("--epochs", "nan", "invalid int"),
    ("--sparse-epochs", "-1", "from 0 to 10000"), ("--sparse-epochs", BIG, "from 0 to 10000"),
    ("--reg", "1e9", "between 0 and 1"), ("--delta-reg", "-1", "between 0 and 1"),
    ("--delta-reg", "1e9", "between 0 and 1"),
    ("--imgsz", "0", "multiple of 32"), ("--imgsz", "-32", "multiple of 32"), ("--imgsz", HUGE_IMGSZ, "at most 4096"),
    ("--batch", "0", "from 1 to 1024"), ("--batch", "-1", "from 1 to 1024"), ("--batch", BIG, "from 1 to 1024"),
    ("--workers", "-1", "at least 0"),
    ("--seed", "-1", "from 0 to"), ("--seed", str(2**32), "from 0 to"),
]
CASES.update({f"prune {flag} {value}": (lambda f, d, flag=flag, value=value: _prune(f, d, flag, value), expected)
              for flag, value, expected in PRUNE_FLAGS})
CASES.update({f"prune: {key}: .nan in the recipe": (
    lambda f, d, key=key: _prune(f, d, "--config", str(f / f"nan_{key}.yaml")),
    "a whole number" if key == "epochs" else "a finite number") for key in NAN_KEYS})
CASES["prune: batch: 1e9 in the recipe"] = (lambda f, d: _prune(f, d, "--config", str(f / "batch_1e9.yaml")),
                                             "from 1 to 1024")

OTHER_COMMANDS = {  # command -> its arguments before the flag under test, writing (if at all) under the fixture
    "val": lambda f, d: ["val", "--model", str(f / "good.pt"), "--data", d, "--imgsz", "160"],
    "train": lambda f, d: ["train", "--model", "rtdetr-tiny", "--data", d, "--imgsz", "160", "--epochs", "1",
                           "--project", str(f / "train")],
    "bench": lambda f, d: ["bench", "--model", str(f / "good.pt"), "--imgsz", "160", "--batch", "1", "--repeats", "1",
                           "--warmup", "0"],
    "check": lambda f, d: ["check", "--model", str(f / "good.pt"), "--imgsz", "160"],
    "data synthetic": lambda f, d: ["data", "synthetic", "--out", str(f / "syn"), "--images", "4", "--imgsz", "64"],
    "demo": lambda f, d: ["demo", "--project", str(f / "demo")],
}
OTHER_FLAGS = [
    ("val", "--batch", "0", "from 1 to 1024"), ("val", "--batch", "-1", "from 1 to 1024"),
    ("val", "--batch", BIG, "from 1 to 1024"), ("val", "--workers", "-1", "at least 0"),
    ("val", "--imgsz", HUGE_IMGSZ, "at most 4096"),
    ("train", "--epochs", "0", "at least 1"), ("train", "--epochs", "-1", "from 0 to 10000"),
    ("train", "--epochs", BIG, "from 0 to 10000"), ("train", "--batch", "0", "from 1 to 1024"),
    ("train", "--batch", BIG, "from 1 to 1024"), ("train", "--workers", "-1", "at least 0"),
    ("train", "--seed", "-1", "from 0 to"), ("train", "--imgsz", "0", "multiple of 32"),
    ("bench", "--batch", "0", "from 1 to 1024"), ("bench", "--batch", BIG, "from 1 to 1024"),
    ("bench", "--repeats", "0", "repeats from 1"), ("bench", "--repeats", BIG, "repeats from 1"),
    ("bench", "--warmup", "-1", "warmup from 0"), ("bench", "--warmup", BIG, "warmup from 0"),
    ("bench", "--imgsz", HUGE_IMGSZ, "at most 4096"),
    ("check", "--imgsz", HUGE_IMGSZ, "at most 4096"), ("check", "--round-to", "-1", "at least 1"),
    ("check", "--max-layer-ratio", "1e9", "between 0 and 1"),
    ("data synthetic", "--images", "0", "from 2"), ("data synthetic", "--images", "-1", "from 2"),
    ("data synthetic", "--images", BIG, "from 2"), ("data synthetic", "--imgsz", "0", "from 32"),
    ("data synthetic", "--imgsz", BIG, "from 32"), ("data synthetic", "--seed", "-1", "0 or more"),
    ("demo", "--epochs", "-1", "from 0 to 10000"), ("demo", "--epochs", BIG, "from 0 to 10000"),
]
CASES.update({f"{cmd} {flag} {value}": (lambda f, d, cmd=cmd, flag=flag, value=value: [*OTHER_COMMANDS[cmd](f, d),
                                                                                      flag, value], expected)
              for cmd, flag, value, expected in OTHER_FLAGS})


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse refuses a value of the wrong type itself ("nan" for a whole number)
        return e.code


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, files, data_yaml, capsys, monkeypatch):
    argv, expected = CASES[case]
    monkeypatch.chdir(files)  # a default relative output (runs/...) would show up below
    before = sorted(p.name for p in files.rglob("*"))
    assert _exit_status(argv(files, data_yaml)) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in files.rglob("*")) == before, "nothing written or changed"


def test_unknown_cli_flag_suggests(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--speedup", "2"])
    assert e.value.code == 2 and "Did you mean '--speed-up'" in capsys.readouterr().err


def test_verbose_shows_the_traceback(files, data_yaml):
    from rtdetr_prune.errors import UserError

    with pytest.raises(UserError):
        main(["prune", "--verbose", *_prune(files, data_yaml, "--speed-up", "0.5")[1:]])


def test_legitimate_extremes_run(files, data_yaml, monkeypatch, capsys):
    """The values the table leaves out run: no finetuning (--epochs 0), workers beyond the CPU count (Ultralytics
    clamps them), and upper limits far above what is needed (steps; gradient batches: one pass over the data)."""
    monkeypatch.chdir(files)
    argv = _prune(files, data_yaml, "--method", "group_taylor", "--workers", "1000000000", "--max-steps", "1000000000",
                  "--grad-batches", "1000000000", "--seed", str(2**31 - 1), "--speed-up", "1.2", "--step-ratio", "0.2",
                  "--no-latency", "--project", str(files / "extremes"))
    assert main(argv) == 0, capsys.readouterr().err
    report = yaml.safe_load((files / "extremes" / "exp" / "report.json").read_text())
    assert report["speed_up_achieved"] >= 1.2 and report["finetuned"] is None
    assert report["pruned"]["map50"] is not None  # validated with --workers 1e9
