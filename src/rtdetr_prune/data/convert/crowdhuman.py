"""Read CrowdHuman: ``annotation_{train,val}.odgt`` (one JSON record per line) and ``Images/<ID>.jpg``."""

from __future__ import annotations

import json
from pathlib import Path

from rtdetr_prune.data.convert.common import Box, ConvertStats, Sample, check_image
from rtdetr_prune.errors import UserError, suggest

BOX_KINDS = ("fbox", "vbox")  # full body (may extend past the image) or visible part


def read_crowdhuman(
    src: Path, stats: ConvertStats, *, box: str = "fbox", heads: bool = False
) -> tuple[list[str], list[Sample]]:
    """Read the CrowdHuman annotation files found in ``src``.

    Args:
        src: a folder holding ``annotation_train.odgt`` and/or ``annotation_val.odgt`` and an
            ``Images/`` folder (``images/`` works too) with ``<ID>.jpg``. With only the train file, a
            val split is made by file name.
        stats: where dropped boxes and skipped images are counted.
        box: which person box to use: ``fbox`` (full body) or ``vbox`` (visible part).
        heads: also write head boxes (``hbox``) as a second class.

    Returns:
        Class names (``person``, and ``head`` with ``heads``) and one sample per record with an image.
        Boxes tagged ``mask`` (crowds, reflections: CrowdHuman's ignore regions) or with
        ``extra.ignore == 1`` are dropped; a head is also dropped when ``head_attr.ignore == 1``.
        An ``ID`` whose image lies outside ``src`` (``..``, an absolute path, a symlink) stops the
        conversion with an error naming it.
    """
    if box not in BOX_KINDS:
        raise UserError(f"box={box!r} is not a CrowdHuman person box; use one of {BOX_KINDS}.{suggest(box, BOX_KINDS)}")
    files = {s: src / f"annotation_{s}.odgt" for s in ("train", "val") if (src / f"annotation_{s}.odgt").is_file()}
    if "train" not in files:
        raise UserError(f"No annotation_train.odgt in {src}; point the source at the folder holding the .odgt files.")
    image_dir = next((src / d for d in ("Images", "images") if (src / d).is_dir()), None)
    if image_dir is None:
        raise UserError(f"No Images/ folder in {src}; unpack the CrowdHuman_*.zip image archives there.")
    samples = []
    for split, path in files.items():
        for line_no, record in _records(path):
            where = f"{path}:{line_no}"
            sample = _sample(record, split, src.resolve(), image_dir, box, heads, stats, where=where)
            if sample is not None:
                samples.append(sample)
    return ["person", "head"] if heads else ["person"], samples


def _records(path: Path):
    """Yield (line number, record) for each non-blank line of an .odgt file."""
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{line_no} is not a JSON record ({e.msg}); re-download the file.") from e


def _sample(record: dict, split: str, root: Path, image_dir: Path, box: str, heads: bool, stats: ConvertStats,
            where: str):
    """The sample of one .odgt record; ``root`` is the resolved source, which its image must lie in."""
    if not isinstance(record, dict) or "ID" not in record:
        raise UserError(f"{where} has no 'ID'; is this a CrowdHuman .odgt file?")
    image = image_dir / f"{record['ID']}.jpg"
    if not image.is_file():
        stats.skip("missing_image")
        return None
    size = check_image(root, image, f"{where}: ID {record['ID']!r}", stats)  # counted when not an image
    if size is None:
        return None
    boxes = []
    for entry in record.get("gtboxes") or []:
        if isinstance(entry, dict):
            boxes += _boxes(entry, box, heads, stats)
        else:
            stats.drop("corrupt")
    return Sample(split, image, size[0], size[1], boxes)


def _boxes(entry: dict, box: str, heads: bool, stats: ConvertStats) -> list[Box]:
    """The person (and head) boxes of one ``gtboxes`` entry, after dropping ignore regions."""
    wanted = {0: box, 1: "hbox"} if heads else {0: box}
    if entry.get("tag") != "person":
        stats.drop("mask" if entry.get("tag") == "mask" else "unknown_tag", len(wanted))
        return []
    out = []
    ignored = (entry.get("extra") or {}).get("ignore") == 1
    for cls, key in wanted.items():
        head_ignored = cls == 1 and (entry.get("head_attr") or {}).get("ignore") == 1
        xyxy = _xyxy(entry.get(key))
        if ignored or head_ignored:
            stats.drop("ignore_flag")
        elif xyxy is None:
            stats.drop("corrupt")
        else:
            out.append((cls, *xyxy))
    return out


def _xyxy(value) -> tuple[float, float, float, float] | None:
    """``[x, y, w, h]`` (pixels, top-left) as ``(x1, y1, x2, y2)``; None when malformed."""
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return x, y, x + w, y + h  # non-finite numbers are caught by clip_box
