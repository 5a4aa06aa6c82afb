"""The model zoo: RT-DETR configs by name, and one loader for names, YAML files and checkpoints.

Example:
    >>> from rtdetr_prune.zoo import load_model
    >>> model = load_model("rtdetr-tiny", nc=3)  # an ultralytics RTDETRDetectionModel
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.zoo import resnet_vd  # noqa: F401  (registers the ResNet-vd builders with torchvision)

CFG_DIR = Path(__file__).parent / "cfg"

# name -> YAML. Ours live in cfg/; the others are Ultralytics' own configs, found by file name in its package.
ZOO = {
    "rtdetr-tiny": str(CFG_DIR / "rtdetr-tiny.yaml"),
    "rtdetr-r18": str(CFG_DIR / "rtdetr-r18.yaml"),
    "rtdetr-r34": str(CFG_DIR / "rtdetr-r34.yaml"),
    "rtdetr-r50": "rtdetr-resnet50.yaml",
    "rtdetr-r101": "rtdetr-resnet101.yaml",
    "rtdetr-l": "rtdetr-l.yaml",
    "rtdetr-x": "rtdetr-x.yaml",
}


def zoo_names() -> list[str]:
    """Names accepted by :func:`load_model` besides file paths."""
    return list(ZOO)


def load_model(spec: str | Path | nn.Module, nc: int | None = None, verbose: bool = False) -> nn.Module:
    """Build or load an RT-DETR detection model.

    Args:
        spec: a zoo name (``rtdetr-r18``), an Ultralytics RT-DETR ``.yaml``, a trained ``.pt``
            checkpoint (pickle: load only files you trust), a safe pruned-model directory or its
            ``.json`` spec, or a model object (returned as is).
        nc: number of classes for a model built from YAML; ignored for checkpoints.
        verbose: print Ultralytics' layer table when building from YAML.

    Returns:
        An ``ultralytics.nn.tasks.RTDETRDetectionModel`` (or subclass) in float32, eval mode.

    Raises:
        UserError: unknown name, missing or unreadable file, or a model that is not an RT-DETR.
    """
    if isinstance(spec, nn.Module):
        return _require_rtdetr(spec, "the given model")
    name = str(spec)
    if name in ZOO:
        return _from_yaml(ZOO[name], nc, verbose, label=name)
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise UserError(f"Model config '{name}' not found. Give an existing .yaml file or a zoo name ({', '.join(ZOO)}).")
        return _from_yaml(str(path), nc, verbose, label=name)
    if suffix == ".pt":
        return _from_checkpoint(path)
    if suffix == ".json" or path.is_dir():
        from rtdetr_prune.safe_io import load_safe  # late import: only needed for the safe format

        return _require_rtdetr(load_safe(path), name)
    raise UserError(
        f"Unknown model '{name}'.{suggest(name, ZOO)} Give a zoo name ({', '.join(ZOO)}), "
        "an RT-DETR .yaml, a .pt checkpoint, or a pruned-model directory."
    )


def _from_yaml(cfg: str, nc: int | None, verbose: bool, label: str) -> nn.Module:
    from ultralytics.nn.tasks import RTDETRDetectionModel, yaml_model_load

    try:
        spec = yaml_model_load(cfg)
        head = spec["head"][-1][2]
    except Exception as e:  # noqa: BLE001 - any unreadable config is the user's to fix
        raise UserError(f"Model config '{label}' is not a readable Ultralytics model YAML ({e}).") from e
    if spec.get("scales") and not spec.get("scale"):  # rtdetr-l/x.yaml list one scale; name it (no warning)
        spec["scale"] = next(iter(spec["scales"]))
    if head != "RTDETRDecoder":
        raise UserError(f"'{label}' is not an RT-DETR model (its head is {head}, not RTDETRDecoder). "
                        "rtdetr-prune prunes RT-DETR detectors only; give an RT-DETR checkpoint or config.")
    try:
        model = RTDETRDetectionModel(spec, nc=nc, verbose=verbose)
    except KeyError as e:  # parse_model looks layer names up in its own namespace
        raise UserError(
            f"Model config '{label}' names a layer Ultralytics does not know: {e}. Import the module that defines "
            "it before building (e.g. with --plugin my_modules.py), or use a zoo name."
        ) from e
    return _require_rtdetr(model.eval(), label)


def _from_checkpoint(path: Path) -> nn.Module:
    """Load an Ultralytics-format checkpoint without any download attempt."""
    from ultralytics.nn.tasks import load_checkpoint

    if not path.is_file():
        raise UserError(f"Checkpoint '{path}' not found. Check the path (no download is attempted).")
    if path.stat().st_size == 0:
        raise UserError(f"Checkpoint '{path}' is empty. Re-save or re-download it.")
    try:
        # inplace=False keeps activations as saved (Ultralytics' default flips them all to in-place, which
        # changes SiLU results in the last bit): a reloaded model then reproduces its outputs exactly.
        model, _ = load_checkpoint(str(path.resolve()), inplace=False)
    except (TypeError, RuntimeError, EOFError, ValueError, KeyError, AttributeError, ModuleNotFoundError) as e:
        raise UserError(f"Checkpoint '{path}' could not be loaded: {_load_failure(e)}") from e
    return _require_rtdetr(model.float().eval(), str(path))


def _load_failure(e: BaseException) -> str:
    """What went wrong loading a checkpoint, and the fix, in one sentence."""
    if isinstance(e, ModuleNotFoundError):
        return f"it needs the module '{e.name}', which is not importable here. Install it, or load it with --plugin."
    text = str(e)
    if "not a loadable checkpoint" in text or isinstance(e, EOFError):
        return "the file is empty, truncated or corrupted. Re-save or re-copy it."
    first = (text.strip().splitlines() or [type(e).__name__])[0][:160]
    return f"{first}. Re-save it with Ultralytics or rtdetr-prune."


def _require_rtdetr(model: nn.Module, label: str) -> nn.Module:
    from ultralytics.nn.modules.head import RTDETRDecoder

    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not isinstance(layers[-1], RTDETRDecoder):
        kind = type(layers[-1]).__name__ if isinstance(layers, nn.Sequential) and len(layers) else type(model).__name__
        raise UserError(
            f"'{label}' is not an RT-DETR model (its head is {kind}, not RTDETRDecoder). "
            "rtdetr-prune prunes RT-DETR detectors only; give an RT-DETR checkpoint or config."
        )
    if not hasattr(model, "nc"):  # Ultralytics' trainer sets it; its loss reads it
        model.nc = layers[-1].nc
    return model
