"""Saving and loading (pruned) transformers RT-DETRs without pickle: the safe format of :mod:`rtdetr_prune.io.safe`.

transformers' config describes one width per kind of layer (``encoder_ffn_dim``, ``hidden_sizes``...), so it
cannot describe a pruned model, and ``from_pretrained`` would rebuild the unpruned widths (or refuse the
weights). The safe directory records the model's transformers config *and* every layer's width: loading
builds the model transformers' way from the config, shrinks each layer to its recorded width, and loads
the weights strictly. What comes back is a plain ``RTDetrForObjectDetection`` (or ``RTDetrV2ForObjectDetection``):
transformers' image processor and ``post_process_object_detection`` work with it as with any other.

Example:
    >>> save_safe(pruned, "runs/prune/exp/weights/pruned_safe", meta={"method": "lamp"})
    >>> model = load_safe("runs/prune/exp/weights/pruned_safe")
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtdetr_prune._version import __version__
from rtdetr_prune.errors import UserError
from rtdetr_prune.io.safe import load_weights, read_safe, write_safe
from rtdetr_prune.models.transformers.zoo import MODEL_TYPES, from_config

FAMILY = "transformers"


def save_safe(model: nn.Module, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Save ``model`` as ``out_dir/model.safetensors`` plus ``out_dir/model.json``, atomically.

    Args:
        model: a transformers RT-DETR detection model (v1 or v2), pruned or not.
        out_dir: directory to write (created; an earlier save there is replaced).
        meta: JSON-serializable record of our own (method, speed-up, history), stored under ``"meta"``.

    Returns:
        ``out_dir``, which :func:`load_safe` (and ``rtdetr_prune.load_model``) accept.
    """
    config = model.config
    spec = {
        "family": FAMILY,
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "config": config.to_dict(),
        "meta": meta or {},
        "versions": _versions(),
    }
    return write_safe(model, out_dir, spec)


def load_safe(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_safe`, without unpickling anything.

    Returns:
        The ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection``, float32, eval mode, with the saved
        (pruned) widths and weights.

    Raises:
        UserError: a missing, corrupt or unknown-format file, or files that do not fit together.
    """
    spec, tensors, spec_path = read_safe(path, {"model_type": str, "config": dict})
    if spec["model_type"] not in MODEL_TYPES:
        raise UserError(f"'{spec_path}' holds a '{spec['model_type']}' model; this rtdetr-prune loads "
                        f"{', '.join(MODEL_TYPES)}. Re-save the model.")
    model = from_config(spec["model_type"], dict(spec["config"]), nc=None)
    load_weights(model, spec, tensors, spec_path)
    return model.float().eval()


def _versions() -> dict[str, str]:
    import transformers

    return {"rtdetr_prune": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
