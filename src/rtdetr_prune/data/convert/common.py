"""What every converter shares: the in-between record, box clipping, and the YOLO-format writer.

A format reader turns its source files into :class:`Sample` records (pixel boxes, already stripped of
ignore regions) and counts what it dropped in a :class:`ConvertStats`. :func:`write_yolo` then clips
the boxes, writes the label files, links the images and writes the data YAML.

Paths named by annotation files are untrusted (COCO ``file_name``, VOC ``<filename>`` and ImageSets
ids, CrowdHuman ids, and VisDrone names, which come from the folder listing but may be symlinks). The
convention for every format:

- A path that resolves (symlinks followed) outside the source folder is **refused**: the conversion
  stops with a one-line :class:`~rtdetr_prune.errors.UserError` naming the entry, before anything is
  written (:func:`inside_source`). It is never skipped silently: such an entry means a broken or
  hostile annotation file, and a dataset missing some of its images would train and score without a
  word.
- A file that is not an image is **skipped and counted** in ``conversion.json`` under
  ``skipped_images``, as unreadable images always were: ``not_an_image`` when its suffix is not an
  image suffix (:data:`IMAGE_SUFFIXES`), ``unreadable_image`` when Pillow cannot open and verify it
  (a text file named ``.jpg``, a truncated PNG) (:func:`check_image`).
- Images are hard-linked into the output only when the file resolves inside the source and has no
  other name (link count 1); otherwise they are copied (:func:`_link_or_copy`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from rtdetr_prune.errors import UserError

# (class id, x1, y1, x2, y2): a box in pixels, top-left origin, x2/y2 exclusive (continuous coordinates).
Box = tuple[int, float, float, float, float]

# Split names we write, in the order they appear in the data YAML.
SPLITS = ("train", "val", "test")

# Image file suffixes (lower case) we write: ones both Pillow and Ultralytics' loader read.
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


@dataclass
class Sample:
    """One source image and its boxes, before clipping.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        image: path of the source image file.
        width: image width in pixels.
        height: image height in pixels.
        boxes: pixel boxes, see :data:`Box`.
    """

    split: str
    image: Path
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


@dataclass
class ConvertStats:
    """Counts of what a conversion kept and dropped, written to ``conversion.json`` next to the YAML."""

    images: Counter = field(default_factory=Counter)  # split -> images written
    empty_images: Counter = field(default_factory=Counter)  # split -> images written with no boxes
    boxes: Counter = field(default_factory=Counter)  # split -> boxes written
    clipped_boxes: int = 0  # boxes kept after being clipped to the image border
    dropped_boxes: Counter = field(default_factory=Counter)  # reason -> boxes not written
    skipped_images: Counter = field(default_factory=Counter)  # reason -> source images not written

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` source boxes that were not written, under ``reason``."""
        if n:
            self.dropped_boxes[reason] += n

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` source images that were not written, under ``reason``."""
        if n:
            self.skipped_images[reason] += n

    def to_dict(self) -> dict:
        """Plain-data form, for JSON."""
        return {
            "images": _by_split(self.images),
            "empty_images": _by_split(self.empty_images),
            "boxes": _by_split(self.boxes),
            "clipped_boxes": self.clipped_boxes,
            "dropped_boxes": dict(sorted(self.dropped_boxes.items())),
            "skipped_images": dict(sorted(self.skipped_images.items())),
        }

    def summary(self) -> str:
        """A few human-readable lines, e.g. ``images: train 10, val 2 (1 without boxes)``."""
        per_split = ", ".join(f"{s} {self.images[s]}" for s in SPLITS if s in self.images)
        empty = sum(self.empty_images.values())
        lines = [
            f"images: {per_split} ({empty} without boxes)",
            f"boxes: {sum(self.boxes.values())} ({self.clipped_boxes} clipped to the image border)",
        ]
        if self.dropped_boxes:
            lines.append("dropped boxes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped_boxes.items())))
        if self.skipped_images:
            lines.append("skipped images: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_images.items())))
        return "\n".join(lines)


def _by_split(counts: Counter) -> dict[str, int]:
    return {s: counts[s] for s in SPLITS if s in counts}


def clip_box(box: Box, width: int, height: int, min_size: float, stats: ConvertStats) -> Box | None:
    """Clip a pixel box to the image; return None (and count why) when nothing usable is left.

    Args:
        box: pixel box, see :data:`Box`.
        width: image width in pixels.
        height: image height in pixels.
        min_size: smallest kept side in pixels after clipping.
        stats: where dropped and clipped boxes are counted.
    """
    cls, x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        stats.drop("corrupt")
        return None
    if x2 <= x1 or y2 <= y1:
        stats.drop("degenerate")
        return None
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        stats.drop("outside_image")
        return None
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if cx2 - cx1 < min_size or cy2 - cy1 < min_size:
        stats.drop("too_small")
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        stats.clipped_boxes += 1
    return cls, cx1, cy1, cx2, cy2


def yolo_line(box: Box, width: int, height: int) -> str:
    """Format a pixel box inside the image as a YOLO label line ``cls cx cy w h`` (normalized to 0..1)."""
    cls, x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
    return f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height in pixels of a file Pillow opens and verifies as an image; None if it is not one.

    The file must open as an image (a text file named ``.jpg`` does not), and ``verify`` must pass
    without decoding the pixels: for PNG it checks every chunk, so a truncated PNG is caught here; for
    JPEG it reads only the header (Ultralytics repairs a JPEG without its end marker, into a new file).
    """
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
            return size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # Pillow reports some corrupt files as SyntaxError


def inside_source(root: Path, path: Path, entry: str) -> Path:
    """``path`` with symlinks resolved; a UserError naming ``entry`` when that leaves the source folder.

    Args:
        root: the source folder, already resolved (``src.resolve()``).
        path: a path built from an annotation entry; it need not exist.
        entry: where the path came from, for the message, e.g. ``"instances_train.json file_name '../x.jpg'"``.

    Raises:
        UserError: ``path`` resolves outside ``root`` (a ``..`` that climbs out, an absolute path, or a
            symlink that leads out).
    """
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL byte in the name
        raise UserError(f"{entry} is not a usable path ({e}); fix the entry in the annotation file.") from e
    if real != root and root not in real.parents:
        raise UserError(
            f"{entry} leads to {real}, outside the source folder {root}; annotation paths must stay inside the "
            "source (a symlink that leads out counts as outside): fix the entry, or copy the file into the source."
        )
    return real


def check_image(root: Path, path: Path, entry: str, stats: ConvertStats) -> tuple[int, int] | None:
    """Width and height of the image at ``path``, refused outside the source (see :func:`inside_source`).

    Returns None, counted in ``stats`` under ``not_an_image`` (suffix) or ``unreadable_image``
    (Pillow cannot open and verify it), when ``path`` is not an image.
    """
    real = inside_source(root, path, entry)
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:  # the output keeps this name: Ultralytics must see an image
        stats.skip("not_an_image")
        return None
    size = image_size(real)
    if size is None:
        stats.skip("unreadable_image")
    return size


def ensure_val(samples: list[Sample], val_fraction: float) -> list[Sample]:
    """Give a source without a val split one: move ``val_fraction`` of the train images to val.

    The choice hashes the file name, so the same image always lands in the same split, whatever else
    the source holds. With two or more train images, at least one goes to each split.
    """
    if any(s.split == "val" for s in samples):
        return samples
    train = [s for s in samples if s.split == "train"]
    keys = {id(s): zlib.crc32(s.image.name.encode()) % 10_000 for s in train}
    chosen = {i for i, key in keys.items() if key < val_fraction * 10_000}
    if len(train) >= 2 and len(chosen) in (0, len(train)):
        # Tiny sources: flip the image with the smallest hash so both splits exist.
        first = min(keys, key=keys.get)
        chosen ^= {first}
    for s in train:
        if id(s) in chosen:
            s.split = "val"
    return samples


def check_dst(src: Path, dst: Path, overwrite: bool) -> None:
    """Raise UserError unless ``dst`` can be written without touching ``src`` or other data."""
    src, dst = src.resolve(), dst.resolve()
    if dst == src or dst in src.parents:
        raise UserError(f"The output folder {dst} is (or contains) the source {src}; choose a separate output folder.")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"The output path {dst} is a file; give a folder path.")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"The output folder {dst} is not empty; choose a new folder or pass overwrite=True.")


def prepare_dst(src: Path, dst: Path, overwrite: bool) -> Path:
    """Create ``dst`` after :func:`check_dst`; with ``overwrite``, first remove what a conversion wrote there."""
    check_dst(src, dst, overwrite)
    dst = dst.resolve()
    if dst.is_dir():
        for sub in ("images", "labels"):
            shutil.rmtree(dst / sub, ignore_errors=True)
        for name in ("data.yaml", "conversion.json"):
            (dst / name).unlink(missing_ok=True)
    dst.mkdir(parents=True, exist_ok=True)
    return dst


def write_data_yaml(root: Path, names: list[str], splits, extra: dict | None = None) -> Path:
    """Write ``root/data.yaml`` for Ultralytics: absolute ``path``, ``images/<split>`` per split, no ``download``."""
    data = {"path": str(Path(root).resolve())}
    data.update({s: f"images/{s}" for s in SPLITS if s in splits})
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    data.update(extra or {})
    path = Path(root) / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def write_yolo(
    samples: list[Sample], names: list[str], dst: Path, stats: ConvertStats, *, link: bool, min_size: float, meta: dict
) -> Path:
    """Write labels and images for ``samples`` under ``dst`` and return the data YAML path.

    Args:
        samples: source images and pixel boxes; class ids index ``names``.
        names: class names, index = YOLO class id.
        dst: prepared output folder (see :func:`prepare_dst`).
        stats: counts to update; saved with ``meta`` as ``dst/conversion.json``.
        link: hard-link images when that is safe and possible (see :func:`_link_or_copy`), else copy them.
        min_size: smallest kept box side in pixels after clipping.
        meta: what was converted and how (format, source, options), for the record.
    """
    used: dict[str, set[str]] = {}
    for sample in samples:
        name = _unique_name(sample.image.name, used.setdefault(sample.split, set()))
        lines = []
        for box in sample.boxes:
            clipped = clip_box(box, sample.width, sample.height, min_size, stats)
            if clipped is not None:
                lines.append(yolo_line(clipped, sample.width, sample.height))
        image_dir, label_dir = dst / "images" / sample.split, dst / "labels" / sample.split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        _link_or_copy(sample.image, image_dir / name, link)
        (label_dir / name).with_suffix(".txt").write_text("".join(line + "\n" for line in lines))
        stats.images[sample.split] += 1
        stats.boxes[sample.split] += len(lines)
        stats.empty_images[sample.split] += not lines
    record = {**meta, **stats.to_dict()}
    (dst / "conversion.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return write_data_yaml(dst, names, set(stats.images))


def _unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``<stem>_<n><suffix>`` when another image in the split already took that stem."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = name, 1
    while Path(candidate).stem in used:
        candidate, n = f"{stem}_{n}{suffix}", n + 1
    used.add(Path(candidate).stem)
    return candidate


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    """Hard-link ``src`` (its real file, symlinks resolved) to ``dst``, or copy it.

    A hard link is a second name for the same file, so writing into it writes into the source. We link
    only a file that the readers found inside the source (:func:`inside_source`) and that has no other
    name (link count 1): a file with more names may share its data with something outside the source
    (linked there earlier), and a link would let writes in the output reach it. Those are copied.
    """
    real = src.resolve()
    if link and real.stat().st_nlink == 1:
        try:
            os.link(real, dst)
            return
        except OSError:
            pass  # another file system, or links not supported: a copy is the same data
    shutil.copyfile(real, dst)
