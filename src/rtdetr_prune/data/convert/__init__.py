"""One entry point that turns a detection dataset in a known format into a YOLO-format copy.

Example:
    >>> from rtdetr_prune.data import convert_dataset
    >>> yaml_path = convert_dataset("visdrone", "datasets/VisDrone", "datasets/visdrone-yolo")
"""

from __future__ import annotations

import inspect
from pathlib import Path

from rtdetr_prune.data.convert.coco import read_coco
from rtdetr_prune.data.convert.common import ConvertStats, check_dst, ensure_val, prepare_dst, write_yolo
from rtdetr_prune.data.convert.crowdhuman import read_crowdhuman
from rtdetr_prune.data.convert.visdrone import read_visdrone
from rtdetr_prune.data.convert.voc import read_voc
from rtdetr_prune.errors import UserError, suggest

# Format name -> reader(src, stats, **format options) -> (class names, samples).
READERS = {
    "visdrone": read_visdrone,
    "crowdhuman": read_crowdhuman,
    "voc": read_voc,
    "coco": read_coco,
}


def convert_formats() -> list[str]:
    """Format names accepted by :func:`convert_dataset`."""
    return list(READERS)


def format_options(fmt: str) -> dict[str, object]:
    """The format-specific options of ``fmt`` and their defaults, e.g. ``{"box": "fbox", "heads": False}``."""
    params = list(inspect.signature(_reader(fmt)).parameters.values())[2:]  # after (src, stats)
    return {p.name: p.default for p in params}


def convert_dataset(
    fmt: str,
    src: str | Path,
    dst: str | Path,
    *,
    overwrite: bool = False,
    link: bool = True,
    min_size: float = 1.0,
    val_fraction: float = 0.2,
    verbose: bool = True,
    **opts,
) -> Path:
    """Convert a detection dataset to YOLO format under ``dst`` and return its data YAML path.

    The source is only read, and only inside: an annotation entry that leads outside ``src`` is
    refused (see :mod:`rtdetr_prune.data.convert.common`). ``dst`` gets ``images/<split>/`` (hard
    links to source images that have no other name, else copies), ``labels/<split>/*.txt``
    (``cls cx cy w h`` per line, normalized to 0..1; empty for images without boxes, which are kept
    as negatives), ``data.yaml`` and ``conversion.json`` (counts of images, boxes, dropped boxes and
    skipped images by reason). Boxes are clipped to the image; boxes fully outside it or thinner
    than ``min_size`` after clipping are dropped.

    Args:
        fmt: source format, one of :func:`convert_formats`: ``visdrone``, ``crowdhuman``, ``voc``, ``coco``.
        src: the source dataset folder (see each reader in ``convert_<fmt>.py`` for the layout).
        dst: output folder; must be empty or missing unless ``overwrite``.
        overwrite: replace an earlier conversion in ``dst`` (its images/, labels/ and files).
        link: hard-link images instead of copying them when possible (saves disk; the linked files are
            the source files, so do not edit images in ``dst`` in place). A source image that already
            has another name (link count above 1) is always copied.
        min_size: smallest box side kept after clipping, in pixels.
        val_fraction: share of train images moved to val when the source has no val split.
        verbose: print a short summary when done.
        **opts: format options, see :func:`format_options`: ``crowdhuman``: ``box="fbox"|"vbox"``,
            ``heads=False``; ``voc``: ``names=None``, ``keep_difficult=False``.

    Returns:
        ``dst/data.yaml``.

    Raises:
        UserError: unknown format or option, missing source files, an annotation entry that leads
            outside ``src`` (``..``, an absolute path, a symlink), or an unusable ``dst``.

    Example:
        >>> yaml_path = convert_dataset("crowdhuman", "CrowdHuman", "crowdhuman-yolo", box="vbox", heads=True)
    """
    reader = _reader(fmt)
    _check_options(fmt, opts)
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction!r}: need a number strictly between 0 and 1, e.g. 0.2.")
    if not min_size >= 0:
        raise UserError(f"min_size={min_size!r}: need a box side in pixels of 0 or more, e.g. 1.")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"The source folder {src} does not exist; give the folder that holds the {fmt} dataset.")
    check_dst(src, dst, overwrite)  # before reading, which can take minutes on big sets
    stats = ConvertStats()
    names, samples = reader(src, stats, **opts)
    samples = ensure_val(samples, val_fraction)
    _check_samples(samples, names, src, fmt, stats)
    dst = prepare_dst(src, dst, overwrite)
    options = {**opts, "min_size": min_size, "val_fraction": val_fraction}
    meta = {"format": fmt, "source": str(src.resolve()), "options": options}
    yaml_path = write_yolo(samples, names, dst, stats, link=link, min_size=min_size, meta=meta)
    if verbose:
        print(f"Converted {fmt} dataset {src} -> {yaml_path}\n{stats.summary()}")
    return yaml_path


def _reader(fmt: str):
    if fmt not in READERS:
        raise UserError(f"Unknown dataset format {fmt!r}; choose from {convert_formats()}.{suggest(fmt, READERS)}")
    return READERS[fmt]


def _check_samples(samples: list, names: list[str], src: Path, fmt: str, stats: ConvertStats) -> None:
    """Refuse to write a dataset Ultralytics cannot train on: no classes, no images, or no train or val split."""
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped_images.items())) or "none"
    if not samples:
        raise UserError(
            f"Found no annotated images in {src} (skipped: {skipped}); check that it has the {fmt} layout "
            "and that the images are unpacked next to the annotations."
        )
    if not names:
        raise UserError(f"Found no object classes in {src}; the annotations name no objects.")
    splits = {s.split for s in samples}
    if not {"train", "val"} <= splits:
        raise UserError(f"The source gave only {sorted(splits)} images; a train and a val split are both needed.")


def _check_options(fmt: str, opts: dict) -> None:
    allowed = format_options(fmt)
    for key in opts:
        if key not in allowed:
            hint = suggest(key, allowed) or f" Options for {fmt}: {sorted(allowed) or 'none'}."
            raise UserError(f"Unknown option {key!r} for format {fmt!r}.{hint}")
        default = allowed[key]
        if default is not None and not isinstance(opts[key], type(default)):
            kind = type(default).__name__
            raise UserError(f"Option {key}={opts[key]!r} for format {fmt!r} must be a {kind} (default {default!r}).")
