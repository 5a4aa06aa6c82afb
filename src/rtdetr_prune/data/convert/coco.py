"""Read COCO detection: ``annotations/instances_{train,val}*.json`` and the image folders they name."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rtdetr_prune.data.convert.common import ConvertStats, Sample, check_image, inside_source
from rtdetr_prune.errors import UserError


def read_coco(src: Path, stats: ConvertStats) -> tuple[list[str], list[Sample]]:
    """Read the COCO instance annotations found in ``src/annotations``.

    Category ids (COCO's run 1..90 with gaps) become 0..N-1 in id order; names come from
    ``categories``. Crowd annotations (``iscrowd: 1``) are dropped. An image's ``file_name`` is looked
    up in ``src/<json tag>/`` (``train2017/``), ``src/images/<json tag>/``, ``src/images/<split>/``,
    ``src/images/``, ``src/<split>/`` and ``src/``, first match wins; a ``file_name`` that leads outside
    ``src`` (``..``, an absolute path, a symlink) stops the conversion with an error naming it.

    Args:
        src: the COCO root, holding ``annotations/instances_train*.json`` (and usually
            ``instances_val*.json``; without it a val split is made by file name).
        stats: where dropped boxes and skipped images are counted.

    Returns:
        Class names and one sample per listed image that exists (with or without annotations).
    """
    files = _annotation_files(src)
    datasets = {split: _load(path) for split, path in files.items()}
    categories = _categories(datasets)
    names = [categories[i] for i in sorted(categories)]
    index = {cat_id: i for i, cat_id in enumerate(sorted(categories))}
    samples = []
    for split, data in datasets.items():
        folders = _image_folders(src, split, files[split].stem.removeprefix("instances_"))
        samples += _samples(data, split, src.resolve(), folders, index, stats, where=files[split].name)
    return names, samples


def _annotation_files(src: Path) -> dict[str, Path]:
    ann_dir = src / "annotations"
    if not ann_dir.is_dir():
        raise UserError(f"No annotations/ folder in {src}; point the source at the COCO root (it holds annotations/).")
    files = {}
    for split in ("train", "val"):
        matches = sorted(ann_dir.glob(f"instances_{split}*.json"))
        if len(matches) > 1:
            raise UserError(f"Several instances_{split}*.json in {ann_dir}: {[p.name for p in matches]}; keep one.")
        if matches:
            files[split] = matches[0]
    if "train" not in files:
        raise UserError(
            f"No instances_train*.json in {ann_dir}; "
            "COCO detection annotations are named like instances_train2017.json."
        )
    return files


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download or re-export it.") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise UserError(f"{path} has no 'images' and 'categories' lists; is it a COCO instances file?")
    return data


def _categories(datasets: dict[str, dict]) -> dict[int, str]:
    """Category id -> name over all files; the files must agree."""
    out: dict[int, str] = {}
    for split, data in datasets.items():
        for cat in data["categories"]:
            try:
                cat_id, name = int(cat["id"]), str(cat["name"])
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"A category in the {split} file lacks an integer 'id' or a 'name': {cat!r}.") from e
            if out.setdefault(cat_id, name) != name:
                raise UserError(
                    f"Category id {cat_id} is '{out[cat_id]}' in one file and '{name}' in the {split} file; "
                    "the annotation files must use the same categories."
                )
    if not out:
        raise UserError("The COCO annotation files list no categories; a detection dataset needs at least one.")
    return out


def _image_folders(src: Path, split: str, tag: str) -> list[Path]:
    return [src / tag, src / "images" / tag, src / "images" / split, src / "images", src / split, src]


def _samples(data: dict, split: str, root: Path, folders: list[Path], index: dict[int, int], stats: ConvertStats,
             where: str) -> list[Sample]:
    """One sample per listed image found; ``root`` is the resolved source, which every image must lie in."""
    by_image = defaultdict(list)
    image_ids = {img.get("id") for img in data["images"]}
    for ann in data.get("annotations") or []:
        if ann.get("image_id") not in image_ids:
            stats.drop("no_image")
        else:
            by_image[ann["image_id"]].append(ann)
    samples = []
    for img in sorted(data["images"], key=lambda im: str(im.get("file_name"))):
        entry = f"{where}: file_name {img.get('file_name')!r}"
        path = _find_image(root, folders, img.get("file_name"), entry)
        if path is None:
            stats.skip("missing_image")
            continue
        header = check_image(root, path, entry, stats)  # counted when not an image
        if header is None:
            continue
        size = _listed_size(img) or header
        boxes = [b for b in (_box(a, index, stats) for a in by_image[img["id"]]) if b is not None]
        samples.append(Sample(split, path, size[0], size[1], boxes))
    return samples


def _find_image(root: Path, folders: list[Path], name, entry: str) -> Path | None:
    """The first folder's ``name`` that is a file; a UserError when that file lies outside ``root``."""
    if not isinstance(name, str) or not name:
        return None
    for folder in folders:
        if (folder / name).is_file():
            inside_source(root, folder / name, entry)
            return folder / name
    return None


def _listed_size(img: dict) -> tuple[int, int] | None:
    w, h = img.get("width"), img.get("height")
    return (int(w), int(h)) if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0 else None


def _box(ann: dict, index: dict[int, int], stats: ConvertStats):
    if ann.get("iscrowd", 0) == 1:
        stats.drop("crowd")
        return None
    if ann.get("category_id") not in index:
        stats.drop("unknown_class")
        return None
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        stats.drop("corrupt")
        return None
    return index[ann["category_id"]], x, y, x + w, y + h
