"""The model zoo: RT-DETR configs by name, built with Ultralytics' own parser.

Example:
    >>> from rtdetr_prune.models.ultralytics.zoo import build
    >>> model = build("rtdetr-tiny", nc=3)  # an ultralytics RTDETRDetectionModel
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.models.ultralytics import resnet_vd  # noqa: F401  (registers the ResNet-vd builders with torchvision)

CFG_DIR = Path(__file__).parent / "cfg"

# name -> YAML. Ours live in cfg/; the others are Ultralytics' own configs, found by file name in its package.
ZOO = {
    "rtdetr-tiny": str(CFG_DIR / "rtdetr-tiny.yaml"),
    "rtdetr-proxy": str(CFG_DIR / "rtdetr-proxy.yaml"),  # the accuracy benchmark's stand-in for R18 (docs/benchmarks.md)
    "rtdetr-r18": str(CFG_DIR / "rtdetr-r18.yaml"),
    "rtdetr-r34": str(CFG_DIR / "rtdetr-r34.yaml"),
    "rtdetr-r50": "rtdetr-resnet50.yaml",
    "rtdetr-r101": "rtdetr-resnet101.yaml",
    "rtdetr-l": "rtdetr-l.yaml",
    "rtdetr-x": "rtdetr-x.yaml",
}


def build(name_or_yaml: str, nc: int | None = None, verbose: bool = False) -> nn.Module:
    """Build an RT-DETR from a zoo name or an Ultralytics RT-DETR ``.yaml`` (random weights, eval mode).

    Raises:
        UserError: a missing or unreadable config, or one whose head is not an RT-DETR decoder.
    """
    if name_or_yaml in ZOO:
        return _from_yaml(ZOO[name_or_yaml], nc, verbose, label=name_or_yaml)
    if not Path(name_or_yaml).is_file():
        raise UserError(f"Model config '{name_or_yaml}' not found. Give an existing .yaml file or a zoo name "
                        f"({', '.join(ZOO)}).")
    return _from_yaml(name_or_yaml, nc, verbose, label=name_or_yaml)


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
    return require_rtdetr(model.eval(), label)


def require_rtdetr(model: nn.Module, label: str) -> nn.Module:
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
