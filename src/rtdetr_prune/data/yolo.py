"""Reading the user's dataset: the data YAML, and batches for gradient-based criteria.

Everything goes through Ultralytics' own dataset code, so a data YAML that trains with Ultralytics
works here, and nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from rtdetr_prune.errors import UserError, first_line


def load_data(path: str | Path) -> dict:
    """Check a YOLO-format data YAML and return Ultralytics' resolved dict (no download).

    Raises:
        UserError: missing or malformed YAML, or image folders that do not exist.
    """
    from ultralytics.data.utils import check_det_dataset

    p = Path(path)
    if not p.is_file():
        raise UserError(f"Data YAML '{path}' not found. Give a YOLO-format data YAML "
                        "(make one with `rtdetr-prune data synthetic` or `rtdetr-prune data convert`).")
    try:
        data = check_det_dataset(str(p), autodownload=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises many types for bad YAMLs
        raise UserError(f"Data YAML '{path}' is not usable: {first_line(e, with_type=False)}. "
                        "Check its 'path', 'train', 'val' and 'names'.") from e
    for split in ("train", "val"):
        folders = _as_list(data.get(split))
        for folder in folders:
            if not Path(folder).exists():
                raise UserError(f"Data YAML '{path}': {split} images '{folder}' do not exist. Fix the path in the YAML.")
        if folders and not any(_has_images(Path(f)) for f in folders):
            raise UserError(f"Data YAML '{path}': the {split} split has no images. Add images (and YOLO labels), "
                            f"or point '{split}:' at the right folder.")
    return data


def _has_images(path: Path) -> bool:
    """A folder with at least one image file (recursively), or a non-empty image-list .txt file."""
    from ultralytics.data.utils import IMG_FORMATS

    if path.is_file():
        return path.suffix.lower() != ".txt" or bool(path.read_text().strip())
    return any(p.suffix.lower().lstrip(".") in IMG_FORMATS for p in path.rglob("*"))


def require_same_classes(model, data: dict, data_path: str) -> None:
    """Refuse a model whose class count differs from the dataset's (its head would not fit the labels)."""
    from rtdetr_prune.models import family_of

    nc_model, nc_data = family_of(model).num_classes(model), len(data["names"])
    if nc_model != nc_data:
        raise UserError(f"The model predicts {nc_model} classes but '{data_path}' has {nc_data}. "
                        "Use the data the model was trained on, or a model trained for these classes.")


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def data_batches(data: dict, imgsz: int, batch: int = 8, split: str = "train", workers: int = 0,
                 spread: int | None = None) -> Callable[[], Iterator[dict]]:
    """A function that yields preprocessed batches of ``split`` (no augmentation), for importance scores.

    Each batch is Ultralytics' training batch: ``img`` (B, 3, imgsz, imgsz) float in [0, 1], and the
    targets ``batch_idx``, ``cls``, ``bboxes`` (normalized xywh) that ``model.loss`` reads. ``spread``: only
    that many images, evenly spaced over the split (datasets stored sequence by sequence, as VisDrone is,
    would otherwise give their first scenes only); None: every image, in order.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader
    from ultralytics.models.rtdetr.val import RTDETRDataset

    hyp = get_cfg(overrides={"imgsz": imgsz})
    dataset = RTDETRDataset(img_path=data[split], imgsz=imgsz, batch_size=batch, augment=False, hyp=hyp,
                            rect=False, cache=None, prefix="importance: ", data=data)
    if len(dataset) == 0:
        raise UserError(f"The {split} split has no images. Add images and labels, or point the YAML at another folder.")
    if spread is None:
        loader = build_dataloader(dataset, batch, workers, shuffle=False)
    else:
        loader = _spread(dataset, batch, spread)

    def batches() -> Iterator[dict]:
        for b in loader:
            b["img"] = b["img"].float() / 255
            yield b

    return batches


def _spread(dataset, batch: int, images: int):
    """A loader over ``images`` evenly spaced images of ``dataset`` (all of them if it has fewer), in order."""
    from torch.utils.data import DataLoader, Subset

    n = len(dataset)
    kept = min(images, n)  # scale by what is kept, not by what was asked: asking for more keeps every image
    keep = sorted({int(i * n / kept) for i in range(kept)})
    return DataLoader(Subset(dataset, keep), batch_size=batch, shuffle=False, collate_fn=dataset.collate_fn)
