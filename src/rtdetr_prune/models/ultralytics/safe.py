"""The safe format (:mod:`rtdetr_prune.io.safe`) for Ultralytics RT-DETR models.

The spec records the model's Ultralytics YAML, classes and names, and the layers a rewrite replaced;
loading builds the unpruned model from the YAML (no pretrained backbone fetched), rewrites those
layers again, shrinks every layer to the recorded widths and loads the weights strictly.

Example:
    >>> save_safe(pruned, "runs/prune/exp/weights/pruned_safe", meta={"method": "lamp"})
    >>> model = load_safe("runs/prune/exp/weights/pruned_safe")  # or the path of its model.json
"""

from __future__ import annotations

import copy
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune._version import __version__
from rtdetr_prune.errors import UserError, first_line
from rtdetr_prune.io.safe import load_weights, read_safe, write_safe
from rtdetr_prune.models.ultralytics import resnet_vd  # noqa: F401  (the zoo's YAMLs name these backbones)
from rtdetr_prune.models.ultralytics.adapter import sync_sizes
from rtdetr_prune.pruning import rules

FAMILY = "ultralytics"


def save_safe(model: nn.Module, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Save ``model`` as ``out_dir/model.safetensors`` plus ``out_dir/model.json``, atomically.

    Args:
        model: an Ultralytics RT-DETR detection model built from a YAML (``model.yaml``), pruned or not.
        out_dir: directory to write (created; an earlier save there is replaced).
        meta: JSON-serializable record of our own (method, speed-up, history), stored under ``"meta"``.

    Returns:
        ``out_dir``, which :func:`load_safe` (and ``rtdetr_prune.load_model``) accept.
    """
    if not isinstance(getattr(model, "yaml", None), dict):
        raise UserError("Saving a safe model needs an Ultralytics model built from a YAML (its `model.yaml` dict); "
                        "load it with rtdetr_prune.load_model.")
    spec = {
        "family": FAMILY,
        "yaml": model.yaml,
        "nc": int(getattr(model, "nc", None) or model.model[-1].nc),
        "names": {str(k): v for k, v in getattr(model, "names", {}).items()},
        "rewritten": rules.rewritten_names(model),  # rebuilt from the YAML, then rewritten again before shrinking
        "meta": meta or {},
        "versions": _versions(),
    }
    return write_safe(model, out_dir, spec)


def load_safe(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_safe`, without unpickling anything.

    Returns:
        The ``RTDETRDetectionModel``, float32, eval mode, with the saved (pruned) widths and weights.

    Raises:
        UserError: a missing, corrupt or unknown-format file, or files that do not fit together.
    """
    spec, tensors, spec_path = read_safe(path, {"yaml": dict, "nc": int, "names": dict})
    model = _build(spec, spec_path)
    rules.apply_rewrites(model, names=spec.get("rewritten", []))
    load_weights(model, spec, tensors, spec_path)
    sync_sizes(model)
    model.yaml = copy.deepcopy(spec["yaml"])  # as saved (the build may have dropped a pretrained-weights name)
    model.nc = spec["nc"]
    model.names = {int(k): v for k, v in spec["names"].items()}
    return model.float().eval()


def _build(spec: dict, label: Path) -> nn.Module:
    """The unpruned model the YAML describes, without downloading any pretrained backbone."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    try:
        return RTDETRDetectionModel(_without_pretrained(spec["yaml"]), nc=spec["nc"], verbose=False)
    except KeyError as e:  # parse_model looks layer names up in its own namespace
        raise UserError(f"The YAML in '{label}' names a layer Ultralytics does not know: {e}. Import the module that "
                        "defines it before loading (e.g. with --plugin my_modules.py).") from e
    except (TypeError, ValueError, IndexError) as e:
        raise UserError(f"The YAML in '{label}' does not build a model ({first_line(e, 3, with_type=False)}). Re-save the model.") from e


def _without_pretrained(yaml: dict) -> dict:
    """A copy of ``yaml`` whose TorchVision backbones load no pretrained weights (ours replace them;
    its ``weights`` argument defaults to a download)."""
    yaml = copy.deepcopy(yaml)
    for layer in chain(yaml.get("backbone", []), yaml.get("head", [])):
        if len(layer) > 3 and layer[2] == "TorchVision" and len(layer[3]) >= 2:
            layer[3] = [*layer[3][:2], None, *layer[3][3:]]
    return yaml


def _versions() -> dict[str, str]:
    import ultralytics

    return {"rtdetr_prune": __version__, "ultralytics": ultralytics.__version__, "torch": torch.__version__}
