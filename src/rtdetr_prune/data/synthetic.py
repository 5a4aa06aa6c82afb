"""A tiny, easy, deterministic detection dataset of solid colored shapes, for tests and smoke runs.

Each class is one shape in one strong color on a pale, low-noise gradient, 1-3 objects per image that
never overlap, each 25-45% of the image side. A tiny RT-DETR learns it in minutes on a CPU. Every
twelfth image has no objects, so the empty-label path is exercised too.

Example:
    >>> from rtdetr_prune.data import make_synthetic
    >>> yaml_path = make_synthetic("runs/shapes", images=96, imgsz=160)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rtdetr_prune.data.convert.common import yolo_line
from rtdetr_prune.data.drawn import PixelBox, check_args, place_boxes, write_dataset
from rtdetr_prune.errors import UserError, suggest

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
    params = {"images": images, "imgsz": imgsz, "seed": seed, "val_fraction": val_fraction}
    return write_dataset(out_dir, images, n_val, lambda i: render_image(i, imgsz, seed, names), names, params)


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
    for box in place_boxes(rng, imgsz, count, SIZE_RANGE, GAP, min_side=4, tries=50):
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


def _check_args(images: int, imgsz: int, seed: int, val_fraction: float, names: list[str]) -> int:
    """Validate the arguments of :func:`make_synthetic`; return the number of val images."""
    n_val = check_args(images, imgsz, seed, val_fraction, min_imgsz=32)
    if not names or len(set(names)) != len(names):
        raise UserError(f"names={names!r}: need at least one class name, without repeats.")
    for name in names:
        if name not in SHAPES:
            raise UserError(f"Unknown shape {name!r} in names; choose from {sorted(SHAPES)}.{suggest(name, SHAPES)}")
    return n_val
