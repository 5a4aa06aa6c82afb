"""The smaller commands, wired end to end: data, train, bench."""

import json

import yaml

from rtdetr_prune.cli import main


def test_data_synthetic_command_is_deterministic(tmp_path, capsys):
    assert main(["data", "synthetic", "--out", str(tmp_path / "a"), "--images", "8", "--imgsz", "64"]) == 0
    assert main(["data", "synthetic", "--out", str(tmp_path / "b"), "--images", "8", "--imgsz", "64"]) == 0
    a = sorted(p.read_bytes() for p in (tmp_path / "a" / "labels").rglob("*.txt"))
    b = sorted(p.read_bytes() for p in (tmp_path / "b" / "labels").rglob("*.txt"))
    assert a == b and len(a) == 8
    assert yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())["nc"] == 3


def test_data_convert_command_with_options(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    (src / "JPEGImages").mkdir()
    for name in "abcdef":  # enough images for both a train and a val split
        Image.new("RGB", (64, 48)).save(src / "JPEGImages" / f"{name}.jpg")
        (src / "Annotations" / f"{name}.xml").write_text(
            "<annotation><size><width>64</width><height>48</height></size>"
            "<object><name>ship</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>33</xmax>"
            "<ymax>25</ymax></bndbox></object></annotation>")
    assert main(["data", "convert", "--format", "voc", str(src), str(tmp_path / "out"),
                 "--opt", "keep_difficult=true"]) == 0
    labels = [p.read_text().strip() for p in (tmp_path / "out" / "labels").rglob("*.txt")]
    assert len(labels) == 6 and all(x.startswith("0 0.25") for x in labels)  # difficult boxes kept when asked
    assert main(["data", "convert", "--format", "voc", str(src), str(tmp_path / "o2"), "--opt", "nokey"]) == 2


def test_train_command_one_epoch(data_yaml, tmp_path, capsys):
    assert main(["train", "--model", "rtdetr-tiny", "--data", data_yaml, "--epochs", "1", "--imgsz", "160",
                 "--batch", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "trained:" in out and (tmp_path / "exp" / "weights" / "last.pt").is_file()


def test_bench_command_two_models(capsys):
    assert main(["bench", "--model", "rtdetr-tiny", "--model", "rtdetr-tiny", "--imgsz", "64", "--batch", "1",
                 "--repeats", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["rows"]) == 2 and result["rows"][0]["latency_ratio"] == 1.0
    assert all(r["latency_ms"] > 0 for r in result["rows"])
