"""The synthetic shapes dataset: deterministic, valid YOLO labels, boxes that fit the drawn shapes."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rtdetr_prune.data import SHAPES, make_synthetic
from rtdetr_prune.errors import UserError

NAMES = ("square", "disc", "triangle")
# Share of a shape's bounding box that it fills: 1 for a square, pi/4 for a disc, 1/2 for a triangle.
FILL = {"square": (0.97, 1.0), "disc": (0.72, 0.84), "triangle": (0.42, 0.6)}
COLOR_TOL = 60  # RGB distance: object jitter (15 per channel) and pixel noise stay well inside it


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("shapes"), images=24, imgsz=96, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "data.yaml")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _labels(yaml_path: Path):
    """(image path, array of shape (n, 5) with cls cx cy w h) for every image."""
    root = yaml_path.parent
    for image in sorted((root / "images").rglob("*.png")):
        label = root / "labels" / image.parent.name / f"{image.stem}.txt"
        rows = np.loadtxt(label, ndmin=2) if label.read_text().strip() else np.zeros((0, 5))
        yield image, rows


def test_same_seed_gives_identical_bytes(tmp_path, dataset):
    again = make_synthetic(tmp_path / "again", images=24, imgsz=96, seed=3)
    assert _files(again.parent) == _files(dataset.parent)
    first, second = yaml.safe_load(dataset.read_text()), yaml.safe_load(again.read_text())
    assert {k: v for k, v in first.items() if k != "path"} == {k: v for k, v in second.items() if k != "path"}


def test_rerun_in_place_replaces_and_other_seed_differs(tmp_path):
    path = make_synthetic(tmp_path / "d", images=6, imgsz=64, seed=0)
    before = _files(path.parent)
    make_synthetic(tmp_path / "d", images=6, imgsz=64, seed=0)
    assert _files(path.parent) == before
    make_synthetic(tmp_path / "d", images=4, imgsz=64, seed=1)
    after = _files(path.parent)
    assert len([k for k in after if k.startswith("images")]) == 4  # the 6-image set was removed first
    assert after["images/train/00000.png"] != before["images/train/00000.png"]


def test_yaml_layout_and_split_sizes(dataset):
    data = yaml.safe_load(dataset.read_text())
    assert Path(data["path"]).is_absolute() and Path(data["path"]) == dataset.parent.resolve()
    assert (data["train"], data["val"], data["nc"]) == ("images/train", "images/val", 3)
    assert data["names"] == {0: "square", 1: "disc", 2: "triangle"}
    assert "download" not in data
    assert len(list((dataset.parent / "images/val").iterdir())) == 6  # round(24 * 0.25)
    assert len(list((dataset.parent / "images/train").iterdir())) == 18


def test_labels_are_valid_and_some_images_are_empty(dataset):
    counts = []
    for image, rows in _labels(dataset):
        assert Image.open(image).size == (96, 96)
        counts.append(len(rows))
        if len(rows):
            assert set(rows[:, 0]) <= {0.0, 1.0, 2.0}
            assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
            assert (rows[:, 1] - rows[:, 3] / 2 >= -1e-6).all() and (rows[:, 1] + rows[:, 3] / 2 <= 1 + 1e-6).all()
            side = rows[:, 3:5] * 96
            assert (side >= 0.25 * 96 - 1).all() and (side <= 0.45 * 96 + 1).all()
    assert counts.count(0) == 2  # images 5 and 17 of 24
    assert max(counts) <= 3 and sum(c > 0 for c in counts) == 22


def test_boxes_fit_the_drawn_shapes(dataset):
    for image, rows in _labels(dataset):
        pixels = np.asarray(Image.open(image), dtype=np.float32)
        covered = np.zeros(pixels.shape[:2], bool)
        for cls, cx, cy, w, h in rows:
            name = NAMES[int(cls)]
            x0, y0, x1, y1 = (int(round(v * 96)) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            near = np.linalg.norm(pixels - np.array(SHAPES[name].color), axis=-1) < COLOR_TOL
            window = near[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2]
            ys, xs = np.nonzero(window)
            # The shape's own pixels span exactly the labelled box (the window starts 2 px before it).
            assert (xs.min() + max(x0 - 2, 0), xs.max() + max(x0 - 2, 0) + 1) == (x0, x1), image
            assert (ys.min() + max(y0 - 2, 0), ys.max() + max(y0 - 2, 0) + 1) == (y0, y1), image
            lo, hi = FILL[name]
            assert lo <= near[y0:y1, x0:x1].mean() <= hi, (image, name)
            covered[y0:y1, x0:x1] = True
        colors = np.array([s.color for s in SHAPES.values()], dtype=np.float32)
        dist = np.linalg.norm(pixels[~covered][:, None, :] - colors[None], axis=-1)
        assert (dist >= COLOR_TOL).all(), f"{image}: object-colored pixels outside every box"


def test_ultralytics_loads_the_yaml(dataset):
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(dataset))
    assert data["nc"] == 3 and data["names"] == {0: "square", 1: "disc", 2: "triangle"}
    assert Path(data["train"]).is_dir() and Path(data["val"]).is_dir()


def test_other_shapes_and_bad_arguments(tmp_path):
    path = make_synthetic(tmp_path / "five", images=4, imgsz=64, names=tuple(SHAPES))
    assert yaml.safe_load(path.read_text())["nc"] == len(SHAPES)
    with pytest.raises(UserError, match="Did you mean 'disc'"):
        make_synthetic(tmp_path / "bad", images=4, names=("square", "disk"))
    with pytest.raises(UserError, match="val_fraction"):
        make_synthetic(tmp_path / "bad", images=4, val_fraction=1.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        make_synthetic(tmp_path / "busy", images=4)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_tiny_rtdetr_learns_it(tmp_path):
    """The promise the dataset exists for: a ~0.6M-parameter RT-DETR reaches mAP50 >= 0.5 in minutes on a CPU.

    Measured on 2 CPU cores: about 3-4 minutes; mAP50 passes 0.5 near epoch 60 and ends near 0.74.
    """
    from ultralytics import RTDETR

    from rtdetr_prune.models.ultralytics.zoo import ZOO

    data = make_synthetic(tmp_path / "shapes")
    model = RTDETR(ZOO["rtdetr-tiny"])
    model.train(data=str(data), imgsz=160, epochs=100, batch=16, device="cpu", workers=0, plots=False,
                project=str(tmp_path / "runs"), name="train", verbose=False, amp=False)
    metrics = model.val(data=str(data), imgsz=160, batch=16, device="cpu", plots=False, verbose=False,
                        project=str(tmp_path / "runs"), name="val")
    assert metrics.box.map50 >= 0.5
