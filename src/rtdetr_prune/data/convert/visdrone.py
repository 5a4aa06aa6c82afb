"""Read VisDrone2019-DET: ``<split>/{images,annotations}``, one ``x,y,w,h,score,category,...`` txt per image."""

from __future__ import annotations

from pathlib import Path

from rtdetr_prune.data.convert.common import IMAGE_SUFFIXES, Box, ConvertStats, Sample, check_image, inside_source
from rtdetr_prune.errors import UserError

# VisDrone categories 1..10 become YOLO ids 0..9; 0 (ignored regions) and 11 (others) are dropped.
NAMES = ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor"]

# Folder name ending -> our split. VisDrone2019-DET-test-challenge has no annotations, so it is not listed.
FOLDER_SPLITS = {"test-dev": "test", "train": "train", "val": "val"}


def read_visdrone(src: Path, stats: ConvertStats) -> tuple[list[str], list[Sample]]:
    """Read every split folder of a VisDrone-DET download.

    Args:
        src: a folder holding ``VisDrone2019-DET-train/``, ``VisDrone2019-DET-val/`` (and optionally
            ``VisDrone2019-DET-test-dev/``), each with ``images/`` and ``annotations/``; or one such
            split folder itself, whose images all go to train (a val split is then made by file name).
        stats: where dropped boxes and skipped images are counted.

    Returns:
        The 10 class names and one sample per image that has an annotation file. An image or
        annotation file that is a symlink leading outside ``src`` stops the conversion with an error
        naming it.
    """
    samples = []
    for split, folder in _split_folders(src):
        samples += _read_folder(src.resolve(), folder, split, stats)
    return list(NAMES), samples


def _split_folders(src: Path) -> list[tuple[str, Path]]:
    if _has_parts(src):
        return [("train", src)]
    found = []
    for child in sorted(p for p in src.iterdir() if p.is_dir() and _has_parts(p)):
        split = next((s for end, s in FOLDER_SPLITS.items() if child.name.lower().endswith(end)), None)
        if split is not None:
            found.append((split, child))
    if not found:
        raise UserError(
            f"No VisDrone split folders in {src}: expected VisDrone2019-DET-train/ and VisDrone2019-DET-val/, "
            "each with images/ and annotations/ (or images/ and annotations/ directly in the source folder)."
        )
    return found


def _has_parts(folder: Path) -> bool:
    """True for a folder with images/ and annotations/*.txt (COCO roots have images/ and annotations/*.json)."""
    ann = folder / "annotations"
    return (folder / "images").is_dir() and ann.is_dir() and next(ann.glob("*.txt"), None) is not None


def _read_folder(root: Path, folder: Path, split: str, stats: ConvertStats) -> list[Sample]:
    """The samples of one split folder; ``root`` is the resolved source, which every file read must lie in."""
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = {p.stem for p in images}
    stats.skip("annotation_without_image", sum(p.stem not in stems for p in (folder / "annotations").glob("*.txt")))
    samples = []
    for image in images:
        ann = folder / "annotations" / f"{image.stem}.txt"
        if not ann.is_file():
            stats.skip("no_annotation_file")  # unlabeled is not the same as empty: not a safe negative
            continue
        inside_source(root, ann, f"{folder.name}/annotations/{ann.name}")
        size = check_image(root, image, f"{folder.name}/images/{image.name}", stats)  # counted when not an image
        if size is not None:
            boxes = [b for b in (_parse_line(line, stats) for line in ann.read_text().splitlines()) if b is not None]
            samples.append(Sample(split, image, size[0], size[1], boxes))
    return samples


def _parse_line(line: str, stats: ConvertStats) -> Box | None:
    """One annotation line ``x,y,w,h,score,category,truncation,occlusion`` (pixels, top-left) as a box, or None."""
    line = line.strip().rstrip(",")  # some files end lines with a comma
    if not line:
        return None
    try:
        x, y, w, h, score, category = (float(v) for v in line.split(",")[:6])
    except ValueError:  # too few fields, or not numbers
        stats.drop("corrupt")
        return None
    if score == 0 or category == 0:
        stats.drop("ignored_region")
    elif category == 11:
        stats.drop("class_others")
    elif not 1 <= category <= 10 or category != int(category):  # NaN fails the range test
        stats.drop("corrupt")
    else:
        return int(category) - 1, x, y, x + w, y + h
    return None
