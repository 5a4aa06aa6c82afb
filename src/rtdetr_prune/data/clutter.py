"""A harder deterministic detection set: many small textured shapes on textured, cluttered backgrounds.

Where the shapes set (:mod:`rtdetr_prune.data.synthetic`) is easy on purpose (three big solid shapes, color
alone tells the class), this one is built to look different and to leave a small detector room to lose
accuracy when it is pruned:

- **more classes** (eight), told apart by outline only: every object gets a random hue and a random fill
  (solid, stripes at a random angle, or dots), so neither color nor texture gives the class away;
- **many small objects**: 3 to 15 per image, each 7-18% of the image side, never overlapping;
- **texture**: the background is a blend of smooth color noise and a faint grating at a random angle and
  frequency, plus pixel noise;
- **clutter**: 2 to 8 distractors per image (strokes and irregular blobs in the objects' palette) that are
  no class at all.

The same arguments always give byte-identical images and labels; image ``i`` depends only on ``i``,
``seed`` and ``imgsz`` (a larger ``images`` keeps the first images unchanged).

Example:
    >>> from rtdetr_prune.data.clutter import make_clutter
    >>> yaml_path = make_clutter("runs/clutter", images=400, imgsz=160)
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rtdetr_prune.data.convert.common import yolo_line
from rtdetr_prune.data.drawn import PixelBox, check_args, place_boxes, write_dataset

CLASSES = ("square", "disc", "triangle", "diamond", "cross", "ring", "star", "hexagon")
SIZE_RANGE = (0.07, 0.18)  # object side / image side: 11-29 px at 160 px, 45-115 px at 640 px
OBJECTS = (3, 15)  # objects per image, inclusive
DISTRACTORS = (2, 8)  # clutter items per image, inclusive
PIXEL_NOISE = 6.0  # std of per-pixel noise, 0..255 units
GAP = 1  # minimum pixels between two objects


def _outline(name: str, box: PixelBox) -> list[tuple[float, float]] | None:
    """The polygon of class ``name`` inside ``box`` (None for the disc and the ring, drawn as ellipses)."""
    x0, y0, x1, y1 = box
    w, h = x1 - 1 - x0, y1 - 1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2
    if name == "square":
        return [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if name == "triangle":
        return [(x0, y0 + h), (x0 + w, y0 + h), (cx, y0)]
    if name == "diamond":
        return [(cx, y0), (x0 + w, cy), (cx, y0 + h), (x0, cy)]
    if name == "cross":
        t = w / 3
        return [(x0 + t, y0), (x0 + 2 * t, y0), (x0 + 2 * t, y0 + t), (x0 + w, y0 + t), (x0 + w, y0 + 2 * t),
                (x0 + 2 * t, y0 + 2 * t), (x0 + 2 * t, y0 + h), (x0 + t, y0 + h), (x0 + t, y0 + 2 * t),
                (x0, y0 + 2 * t), (x0, y0 + t), (x0 + t, y0 + t)]
    if name == "star":  # five points, touching the box's top and sides
        pts = []
        for k in range(10):
            r = (w / 2) if k % 2 == 0 else (w / 5)
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a) * h / w))
        return pts
    if name == "hexagon":
        return [(cx + w / 2 * math.cos(a), cy + h / 2 * math.sin(a)) for a in np.arange(6) * math.pi / 3]
    return None


def _mask(name: str, side: int) -> np.ndarray:
    """One object's shape in a ``side`` x ``side`` box: (side, side, 1) float, 1 inside, 0 outside."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    box = x0, y0, x1, y1 = 0, 0, side, side
    if name in ("disc", "ring"):
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
        if name == "ring":
            t = max(2, (x1 - x0) // 4)
            draw.ellipse((x0 + t, y0 + t, x1 - 1 - t, y1 - 1 - t), fill=0)
    else:
        draw.polygon(_outline(name, box), fill=255)
    return np.asarray(mask, dtype=np.float32)[..., None] / 255


def _fill(rng: np.random.Generator, side: int) -> np.ndarray:
    """An object's fill, (side, side, 3) float: a random hue, solid, striped or dotted (uninformative)."""
    hue = rng.uniform()
    a = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.95))) * 255
    b = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(0.3, 0.7)) % 1, rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.9))) * 255
    kind = int(rng.integers(3))
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    if kind == 0:
        t = np.zeros((side, side), np.float32)
    elif kind == 1:
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 6)
        t = (np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    else:
        period = rng.uniform(3, 5)
        t = ((np.sin(xs * 2 * math.pi / period) * np.sin(ys * 2 * math.pi / period)) > 0.3).astype(np.float32)
    return a * (1 - t[..., None]) + b * t[..., None]


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """Smooth color noise plus a faint grating, (imgsz, imgsz, 3) float in 0..255."""
    coarse = rng.uniform(60, 200, size=(6, 6, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((imgsz, imgsz), Image.BICUBIC), dtype=np.float32)
    ys, xs = np.mgrid[0:imgsz, 0:imgsz].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, 16)
    grating = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
    return smooth + rng.uniform(8, 25) * grating[..., None]


def _distractor(rng: np.random.Generator, draw: ImageDraw.ImageDraw, imgsz: int) -> None:
    """One clutter item: a thick stroke or an irregular blob, in a random color."""
    color = tuple(int(c) for c in rng.integers(20, 236, size=3))
    lo, hi = (max(int(round(f * imgsz)), 4) for f in SIZE_RANGE)
    cx, cy = (float(v) for v in rng.uniform(0, imgsz, size=2))
    if rng.uniform() < 0.5:
        length, angle = rng.uniform(lo, 2 * hi), rng.uniform(0, math.pi)
        dx, dy = length / 2 * math.cos(angle), length / 2 * math.sin(angle)
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=color, width=int(rng.integers(1, 4)))
    else:
        n = int(rng.integers(7, 12))
        radii = rng.uniform(0.3, 0.6, size=n) * rng.uniform(lo, hi)
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles)], fill=color)


def render_clutter(index: int, imgsz: int, seed: int) -> tuple[Image.Image, list[str]]:
    """Draw image ``index``; return it with its YOLO label lines (``cls cx cy w h``, normalized)."""
    rng = np.random.default_rng([seed, index, 1])  # the trailing 1 keeps its stream apart from the shapes set's
    pixels = _background(rng, imgsz)
    canvas = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        _distractor(rng, draw, imgsz)
    pixels = np.array(canvas, dtype=np.float32)
    lines = []
    count = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    for box in place_boxes(rng, imgsz, count, SIZE_RANGE, GAP, min_side=6, tries=30):
        cls = int(rng.integers(len(CLASSES)))
        x0, y0, x1, y1 = box
        mask = _mask(CLASSES[cls], x1 - x0)
        pixels[y0:y1, x0:x1] = pixels[y0:y1, x0:x1] * (1 - mask) + _fill(rng, x1 - x0) * mask
        lines.append(yolo_line((cls, *map(float, box)), imgsz, imgsz))
    pixels = pixels + rng.normal(0.0, PIXEL_NOISE, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)), lines


def make_clutter(out_dir: str | Path, images: int = 400, imgsz: int = 160, seed: int = 0,
                 val_fraction: float = 0.25) -> Path:
    """Write the clutter set in YOLO format and return the path of its data YAML.

    Args:
        out_dir: output folder; must be empty, missing, or a synthetic dataset written before (then replaced).
        images: number of images in total; the last ``round(images * val_fraction)`` form the val split.
        imgsz: image side in pixels (square images), 64 to 4096.
        seed: random seed.
        val_fraction: share of images in the val split, between 0 and 1.

    Returns:
        ``out_dir/data.yaml`` (classes: :data:`CLASSES`).

    Example:
        >>> make_clutter("/tmp/clutter", images=8, imgsz=96)
        PosixPath('/tmp/clutter/data.yaml')
    """
    n_val = check_args(images, imgsz, seed, val_fraction, min_imgsz=64, why=" (objects are 7-18% of it)")
    params = {"kind": "clutter", "images": images, "imgsz": imgsz, "seed": seed, "val_fraction": val_fraction}
    return write_dataset(out_dir, images, n_val, lambda i: render_clutter(i, imgsz, seed), list(CLASSES), params)
