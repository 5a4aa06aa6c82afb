"""A tiny, easy, deterministic detection dataset of solid colored shapes, for tests and smoke runs.

Each class is one shape in one strong color on a pale, low-noise gradient, 1-3 objects per image that
never overlap, each 25-45% of the image side. A tiny RT-DETR learns it in minutes on a CPU. Every
twelfth image has no objects, so the empty-label path is exercised too.

Example:
    >>> from rtdetr_prune.data import make_synthetic
    >>> yaml_path = make_synthetic("runs/shapes", images=96, imgsz=160)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from rtdetr_prune.data.convert.common import write_data_yaml, yolo_line
from rtdetr_prune.errors import UserError, suggest

# x0, y0, x1, y1 in pixels; x1/y1 exclusive, so the shape covers pixels x0..x1-1.
PixelBox = tuple[int, int, int, int]

# Object side as a fraction of the image side. Large, because mosaic and scale augmentation shrink objects
# further: on 2 CPU cores, stock Ultralytics training of rtdetr-tiny for 100 epochs reached mAP50 0.74 with
# (0.25, 0.45) and only 0.50 with (0.15, 0.45).
SIZE_RANGE = (0.25, 0.45)
COLOR_JITTER = 15  # per-channel color noise of an object; small, so color alone tells the class
PIXEL_NOISE = 2.0  # std of per-pixel noise, in 0..255 units: enough to not be flat, too little to confuse
EMPTY_EVERY = 12  # every 12th image (index 5, 17, ...) has no objects
GAP = 2  # minimum pixels between two objects, so every box holds exactly one shape


def _square(draw: ImageDraw.ImageDraw, box: PixelBox, color) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)


def _disc(draw: ImageDraw.ImageDraw, box: PixelBox, color) -> None:
    x0, y0, x1, y1 = box
    draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=color)


def _triangle(draw: ImageDraw.ImageDraw, box: PixelBox, color) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=color)


def _diamond(draw: ImageDraw.ImageDraw, box: PixelBox, color) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=color)


def _cross(draw: ImageDraw.ImageDraw, box: PixelBox, color) -> None:
    x0, y0, x1, y1 = box
    tx, ty = (x1 - x0) // 3, (y1 - y0) // 3
    draw.rectangle((x0 + tx, y0, x1 - 1 - tx, y1 - 1), fill=color)
    draw.rectangle((x0, y0 + ty, x1 - 1, y1 - 1 - ty), fill=color)


@dataclass(frozen=True)
class Shape:
    """How one class looks: a base color (RGB, 0..255) and a function that fills a pixel box."""

    color: tuple[int, int, int]
    draw: Callable[[ImageDraw.ImageDraw, PixelBox, tuple[int, int, int]], None]


# Class name -> look. ``names`` picks from here; each shape and color differs from all others.
SHAPES = {
    "square": Shape((220, 40, 40), _square),
    "disc": Shape((40, 170, 60), _disc),
    "triangle": Shape((40, 70, 220), _triangle),
    "diamond": Shape((235, 170, 20), _diamond),
    "cross": Shape((170, 40, 200), _cross),
}


def make_synthetic(
    out_dir: str | Path,
    images: int = 96,
    imgsz: int = 160,
    seed: int = 0,
    val_fraction: float = 0.25,
    names: tuple[str, ...] = ("square", "disc", "triangle"),
) -> Path:
    """Write a YOLO-format shapes dataset and return the path of its data YAML.

    The same arguments always give byte-identical images and labels. Image ``i`` depends only on
    ``i``, ``seed``, ``imgsz`` and ``names``, so a larger ``images`` keeps the first images unchanged.

    Args:
        out_dir: output folder; must be empty, missing, or a dataset this function wrote before
            (which is then replaced).
        images: number of images in total; the last ``round(images * val_fraction)`` form the val split.
        imgsz: image side in pixels (square images).
        seed: random seed.
        val_fraction: share of images in the val split, between 0 and 1.
        names: class names, each one of :data:`SHAPES`; class id = position in ``names``.

    Returns:
        ``out_dir/data.yaml``, loadable by ``ultralytics.data.utils.check_det_dataset``.

    Example:
        >>> make_synthetic("/tmp/shapes", images=8, imgsz=64)
        PosixPath('/tmp/shapes/data.yaml')
    """
    names = list(names)
    n_val = _check_args(images, imgsz, seed, val_fraction, names)
    out = _prepare_out_dir(Path(out_dir))
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    for i in range(images):
        split = "train" if i < images - n_val else "val"
        image, labels = render_image(i, imgsz, seed, names)
        image.save(out / "images" / split / f"{i:05d}.png", compress_level=1)  # fast; size barely matters here
        (out / "labels" / split / f"{i:05d}.txt").write_text("".join(line + "\n" for line in labels))
    params = {"images": images, "imgsz": imgsz, "seed": seed, "val_fraction": val_fraction}
    return write_data_yaml(out, names, {"train", "val"}, extra={"synthetic": params})


def render_image(index: int, imgsz: int, seed: int, names: list[str]) -> tuple[Image.Image, list[str]]:
    """Draw image ``index`` of a dataset; return it with its YOLO label lines.

    Args:
        index: image number; with ``seed`` it fixes the random stream.
        imgsz: image side in pixels.
        seed: dataset seed.
        names: class names from :data:`SHAPES`.

    Returns:
        An RGB image of ``imgsz`` x ``imgsz`` pixels, and one ``cls cx cy w h`` line (normalized) per object.
    """
    rng = np.random.default_rng([seed, index])
    canvas = Image.fromarray(_background(rng, imgsz))
    draw = ImageDraw.Draw(canvas)
    count = 0 if index % EMPTY_EVERY == 5 else int(rng.integers(1, 4))
    lines = []
    for box in _place_boxes(rng, imgsz, count):
        cls = int(rng.integers(len(names)))
        shape = SHAPES[names[cls]]
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
        color = tuple(int(c) for c in np.clip(np.array(shape.color) + jitter, 0, 255))
        shape.draw(draw, box, color)
        lines.append(yolo_line((cls, *map(float, box)), imgsz, imgsz))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0.0, PIXEL_NOISE, size=(imgsz, imgsz, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)), lines


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A pale, nearly gray linear gradient in a random direction, as uint8 of shape (imgsz, imgsz, 3)."""
    start, end = rng.uniform(150, 235, size=(2, 1, 1, 1)) + rng.uniform(-10, 10, size=(2, 1, 1, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:imgsz, 0:imgsz] / max(imgsz - 1, 1)
    t = (xs * np.cos(angle) + ys * np.sin(angle))[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    return np.rint(start[0] * (1 - t) + end[0] * t).astype(np.uint8)


def _place_boxes(rng: np.random.Generator, imgsz: int, count: int, tries: int = 50) -> list[PixelBox]:
    """Up to ``count`` square pixel boxes inside the image, at least :data:`GAP` pixels apart."""
    lo, hi = (max(int(round(f * imgsz)), 4) for f in SIZE_RANGE)
    boxes: list[PixelBox] = []
    for _ in range(count):
        for _ in range(tries):
            side = int(rng.integers(lo, hi + 1))
            x0, y0 = (int(v) for v in rng.integers(0, imgsz - side + 1, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                break
    return boxes


def _apart(a: PixelBox, b: PixelBox) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def _check_args(images: int, imgsz: int, seed: int, val_fraction: float, names: list[str]) -> int:
    """Validate the arguments of :func:`make_synthetic`; return the number of val images."""
    if not isinstance(images, int) or not 2 <= images <= 1_000_000:
        raise UserError(f"images={images!r}: need an integer from 2 (one train and one val image) to 1000000.")
    if not isinstance(imgsz, int) or not 32 <= imgsz <= 4096:
        raise UserError(f"imgsz={imgsz!r}: need an integer from 32 to 4096 pixels.")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r}: need an integer of 0 or more.")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction!r}: need a number strictly between 0 and 1, e.g. 0.25.")
    if not names or len(set(names)) != len(names):
        raise UserError(f"names={names!r}: need at least one class name, without repeats.")
    for name in names:
        if name not in SHAPES:
            raise UserError(f"Unknown shape {name!r} in names; choose from {sorted(SHAPES)}.{suggest(name, SHAPES)}")
    return min(max(round(images * val_fraction), 1), images - 1)


def _prepare_out_dir(out: Path) -> Path:
    """Make ``out`` ready: create it, or clear a dataset that this module wrote there before."""
    if out.exists() and not out.is_dir():
        raise UserError(f"The output path {out} is a file; give a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not _is_synthetic(out / "data.yaml"):
            raise UserError(f"The output folder {out} is not empty and not a synthetic dataset; choose a new folder.")
        for sub in ("images", "labels"):  # labels/ may also hold Ultralytics' *.cache files
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "data.yaml").unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _is_synthetic(yaml_path: Path) -> bool:
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "synthetic" in data
