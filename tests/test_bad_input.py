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


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, files, data_yaml, capsys):
    argv, expected = CASES[case]
    before = sorted(p.name for p in files.rglob("*"))
    assert main(argv(files, data_yaml)) == 2
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
