"""What the generated (drawn) datasets share: box placement, argument checks, the output folder, the writing loop.

The shapes set (:mod:`rtdetr_prune.data.synthetic`) and the clutter set (:mod:`rtdetr_prune.data.clutter`) differ
in what they draw; both place non-overlapping square boxes, validate the same arguments and write YOLO-format
splits the same way, here. Placement consumes the random generator in a fixed order, so a dataset is
byte-identical for the same arguments.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from rtdetr_prune.data.convert.common import write_data_yaml
from rtdetr_prune.errors import UserError

# x0, y0, x1, y1 in pixels; x1/y1 exclusive, so the shape covers pixels x0..x1-1.
PixelBox = tuple[int, int, int, int]


def place_boxes(rng: np.random.Generator, imgsz: int, count: int, size_range: tuple[float, float], gap: int,
                min_side: int, tries: int) -> list[PixelBox]:
    """Up to ``count`` square boxes inside an ``imgsz`` image, sides ``size_range`` of it (at least ``min_side``
    pixels), at least ``gap`` pixels apart; each box gets ``tries`` random draws, and is left out if none fits."""
    lo, hi = (max(int(round(f * imgsz)), min_side) for f in size_range)
    boxes: list[PixelBox] = []
    for _ in range(count):
        for _ in range(tries):
            side = int(rng.integers(lo, hi + 1))
            x0, y0 = (int(v) for v in rng.integers(0, imgsz - side + 1, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_apart(box, other, gap) for other in boxes):
                boxes.append(box)
                break
    return boxes


def _apart(a: PixelBox, b: PixelBox, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def check_args(images: int, imgsz: int, seed: int, val_fraction: float, min_imgsz: int, why: str = "") -> int:
    """Validate a generator's common arguments (``why``: a note on the image size bound); return the val count."""
    if not isinstance(images, int) or not 2 <= images <= 1_000_000:
        raise UserError(f"images={images!r}: need an integer from 2 (one train and one val image) to 1000000.")
    if not isinstance(imgsz, int) or not min_imgsz <= imgsz <= 4096:
        raise UserError(f"imgsz={imgsz!r}: need an integer from {min_imgsz} to 4096 pixels{why}.")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r}: need an integer of 0 or more.")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction!r}: need a number strictly between 0 and 1, e.g. 0.25.")
    return min(max(round(images * val_fraction), 1), images - 1)


def write_dataset(out_dir: str | Path, images: int, n_val: int, render: Callable[[int], tuple[Image.Image, list[str]]],
                  names: list[str], params: dict) -> Path:
    """Render images 0..images-1 (the last ``n_val`` into val) into ``out_dir`` in YOLO format; return its YAML.

    ``render(i)`` gives image ``i`` and its YOLO label lines; ``params`` go under the YAML's ``synthetic`` key,
    which marks the folder as generated (so a later run may replace it).
    """
    out = _prepare_out_dir(Path(out_dir))
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    for i in range(images):
        split = "train" if i < images - n_val else "val"
        image, labels = render(i)
        image.save(out / "images" / split / f"{i:05d}.png", compress_level=1)  # fast; size barely matters here
        (out / "labels" / split / f"{i:05d}.txt").write_text("".join(line + "\n" for line in labels))
    return write_data_yaml(out, names, {"train", "val"}, extra={"synthetic": params})


def _prepare_out_dir(out: Path) -> Path:
    """Make ``out`` ready: create it, or clear a dataset that was generated there before."""
    if out.exists() and not out.is_dir():
        raise UserError(f"The output path {out} is a file; give a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not _is_generated(out / "data.yaml"):
            raise UserError(f"The output folder {out} is not empty and not a synthetic dataset; choose a new folder.")
        for sub in ("images", "labels"):  # labels/ may also hold Ultralytics' *.cache files
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "data.yaml").unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _is_generated(yaml_path: Path) -> bool:
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "synthetic" in data
