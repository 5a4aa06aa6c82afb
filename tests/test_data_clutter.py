"""The clutter set: deterministic, valid YOLO labels, many small objects of eight classes, clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from rtdetr_prune.data.clutter import CLASSES, OBJECTS, SIZE_RANGE, make_clutter, render_clutter
from rtdetr_prune.data.yolo import load_data
from rtdetr_prune.errors import UserError


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".png", ".txt"}):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_same_arguments_give_identical_files_and_a_loadable_dataset(tmp_path):
    a = make_clutter(tmp_path / "a", images=6, imgsz=96, seed=3)
    b = make_clutter(tmp_path / "b", images=6, imgsz=96, seed=3)
    assert _digest(a.parent) == _digest(b.parent)
    assert _digest(make_clutter(tmp_path / "c", images=6, imgsz=96, seed=4).parent) != _digest(a.parent)
    data = load_data(a)
    assert list(data["names"].values()) == list(CLASSES)
    assert len(list((a.parent / "images" / "val").iterdir())) == 2  # round(6 * 0.25)


def test_image_i_does_not_depend_on_how_many_images_there_are():
    first, lines = render_clutter(2, 96, 0)
    again, lines_again = render_clutter(2, 96, 0)
    assert np.array_equal(np.asarray(first), np.asarray(again)) and lines == lines_again


@pytest.mark.parametrize("index", range(6))
def test_labels_are_small_boxes_of_the_eight_classes_inside_the_image(index):
    image, lines = render_clutter(index, 160, 0)
    assert image.size == (160, 160) and image.mode == "RGB"
    assert 1 <= len(lines) <= OBJECTS[1]
    for line in lines:
        cls, cx, cy, w, h = line.split()
        assert 0 <= int(cls) < len(CLASSES)
        cx, cy, w, h = map(float, (cx, cy, w, h))
        assert w == h and SIZE_RANGE[0] - 0.01 <= w <= SIZE_RANGE[1] + 0.01
        assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1


def test_an_object_differs_from_the_background_around_it():
    """Each labelled box holds a shape: its center pixel stands out from the box's corner (outside the shape)."""
    image, lines = render_clutter(0, 160, 0)
    px = np.asarray(image, dtype=np.float32)
    differs = 0
    for line in lines:
        cls, cx, cy, w, _ = line.split()
        if CLASSES[int(cls)] == "ring":  # a ring's center is background
            continue
        x, y, half = float(cx) * 160, float(cy) * 160, float(w) * 80
        center = px[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].mean((0, 1))
        corner = px[int(y - half), int(x - half)]
        differs += np.abs(center - corner).max() > 10
    assert differs >= 1


@pytest.mark.parametrize("kwargs,match", [({"images": 1}, "images"), ({"imgsz": 32}, "imgsz"),
                                          ({"seed": -1}, "seed"), ({"val_fraction": 1.0}, "val_fraction")])
def test_bad_arguments_say_what_to_give(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        make_clutter(tmp_path / "x", **{"images": 4, "imgsz": 96, **kwargs})


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        make_clutter(tmp_path, images=4, imgsz=96)
    assert Image is not None and (tmp_path / "mine.txt").read_text() == "keep me"
