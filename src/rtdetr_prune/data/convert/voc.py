"""Read Pascal VOC layouts (VOC2007/2012, SeaShips): ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from rtdetr_prune.data.convert.common import ConvertStats, Sample, check_image, inside_source
from rtdetr_prune.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class _Object:
    name: str
    difficult: bool
    xyxy: tuple[float, float, float, float] | None  # continuous pixels; None when the box is malformed


def read_voc(
    src: Path, stats: ConvertStats, *, names: list[str] | None = None, keep_difficult: bool = False
) -> tuple[list[str], list[Sample]]:
    """Read a VOC-style dataset.

    Splits come from ``ImageSets/Main``: train from ``train.txt`` (else ``trainval.txt``), val from
    ``val.txt`` (else ``test.txt``), test from ``test.txt`` when ``val.txt`` exists. Without those
    files every annotation is read and a val split is made by file name. An id or ``<filename>``
    that leads outside ``src`` (``..``, an absolute path, a symlink) stops the conversion with an
    error naming it.

    Args:
        src: the folder holding ``Annotations/`` and ``JPEGImages/`` (e.g. ``VOCdevkit/VOC2007``).
        stats: where dropped boxes and skipped images are counted.
        names: class names in id order; objects of other classes are dropped. Default: the sorted
            set of ``<name>`` values in the annotations read.
        keep_difficult: keep ``<difficult>1</difficult>`` objects (dropped by default, as in VOC's
            own evaluation).

    Returns:
        Class names and one sample per annotation file whose image exists.
    """
    for sub in ("Annotations", "JPEGImages"):
        if not (src / sub).is_dir():
            raise UserError(
                f"No {sub}/ folder in {src}; "
                "point the source at the VOC folder that holds Annotations/ and JPEGImages/."
            )
    if names is not None and not _valid_names(names):
        raise UserError(f"names={names!r}: give a non-empty list of distinct class-name strings, e.g. names=['ship'].")
    parsed = []
    for stem, split in _splits(src).items():
        record = _parse_xml(src.resolve(), src, stem, stats)
        if record is not None:
            parsed.append((split, *record))
    if names is None:
        names = sorted({obj.name for *_, objects in parsed for obj in objects} - {""})
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for split, image, (width, height), objects in parsed:
        samples.append(Sample(split, image, width, height, _boxes(objects, index, keep_difficult, stats)))
    return list(names), samples


def _valid_names(names) -> bool:
    if isinstance(names, str) or not names:
        return False
    return all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)


def _splits(src: Path) -> dict[str, str]:
    """Stem -> split, from ImageSets/Main, or every annotation in train when there are no lists."""
    main = src / "ImageSets" / "Main"
    lists = {n: _read_list(main / f"{n}.txt") for n in ("train", "trainval", "val", "test")}
    train = lists["train"] if lists["train"] is not None else lists["trainval"]
    if train is None:
        return {p.stem: "train" for p in sorted((src / "Annotations").glob("*.xml"))}
    out = {stem: "train" for stem in train}
    if lists["val"] is not None:
        out.update({stem: "test" for stem in lists["test"] or []})
        out.update({stem: "val" for stem in lists["val"]})
    else:
        out.update({stem: "val" for stem in lists["test"] or []})
    return out


def _read_list(path: Path) -> list[str] | None:
    """First word of each line of an ImageSets list, or None when the file does not exist."""
    if not path.is_file():
        return None
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _parse_xml(root: Path, src: Path, stem: str, stats: ConvertStats):
    """(image path, (width, height), objects) for one annotation file; None (counted) when unusable.

    ``root`` is the resolved source: the annotation and its image must lie inside it.
    """
    xml = src / "Annotations" / f"{stem}.xml"
    if not xml.is_file():
        stats.skip("missing_annotation")
        return None
    inside_source(root, xml, f"ImageSets id {stem!r} (Annotations/{stem}.xml)")
    try:
        ann = ET.parse(xml).getroot()
    except ET.ParseError:
        stats.skip("corrupt_annotation")
        return None
    image = _find_image(root, src / "JPEGImages", stem, (ann.findtext("filename") or "").strip())
    if image is None:
        stats.skip("missing_image")
        return None
    header = check_image(root, image, f"The image of Annotations/{stem}.xml", stats)  # counted when not an image
    if header is None:
        return None
    return image, _xml_size(ann) or header, [_parse_object(obj) for obj in ann.iter("object")]


def _find_image(root: Path, folder: Path, stem: str, filename: str) -> Path | None:
    """``<filename>`` in ``folder``, else ``<stem>.<image suffix>``; a UserError when the file lies outside ``root``."""
    named = [(folder / filename, f"Annotations/{stem}.xml <filename> {filename!r}")] if filename else []
    by_id = [(folder / f"{stem}{s}", f"ImageSets id {stem!r} (JPEGImages/{stem}{s})") for s in IMAGE_SUFFIXES]
    for path, entry in named + by_id:
        if path.is_file():  # a name that leads nowhere is passed over (some tools write their own absolute paths)
            inside_source(root, path, entry)
            return path
    return None


def _xml_size(root: ET.Element) -> tuple[int, int] | None:
    """``<size>`` width and height when both are positive integers (some tools write 0 or leave them out)."""
    try:
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _parse_object(obj: ET.Element) -> _Object:
    name = (obj.findtext("name") or "").strip()
    difficult = (obj.findtext("difficult") or "0").strip() == "1"
    try:
        xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        return _Object(name, difficult, None)
    # VOC pixels are 1-based and inclusive: xmin=1, xmax=10 covers the first ten pixels, i.e. [0, 10).
    return _Object(name, difficult, (xmin - 1, ymin - 1, xmax, ymax))


def _boxes(objects: list[_Object], index: dict[str, int], keep_difficult: bool, stats: ConvertStats):
    boxes = []
    for obj in objects:
        if obj.xyxy is None or not obj.name:
            stats.drop("corrupt")
        elif obj.difficult and not keep_difficult:
            stats.drop("difficult")
        elif obj.name not in index:
            stats.drop("unknown_class")
        else:
            boxes.append((index[obj.name], *obj.xyxy))
    return boxes
