"""Saving models in Ultralytics' checkpoint format, so ``ultralytics.RTDETR(path)`` loads them.

A ``.pt`` file is a pickle: loading one runs code from it. Load ``.pt`` files only from sources you
trust; for untrusted exchange use the safe format (weights + architecture spec, no pickle).
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.errors import UserError, first_line
from rtdetr_prune.io.files import atomic_path
from rtdetr_prune.models.ultralytics.zoo import require_rtdetr


def save_checkpoint(model: nn.Module, path: str | Path, train_args: dict | None = None, meta: dict | None = None) -> Path:
    """Save ``model`` (float32, so a reload is bit-identical) as an Ultralytics checkpoint, atomically.

    Args:
        model: the detection model.
        path: destination ``.pt``.
        train_args: Ultralytics arguments to store (``data``, ``imgsz``...), read back by ``RTDETR(path)``.
        meta: our own record (method, speed-up, channel widths), under the ``rtdetr_prune`` key.
    """
    import ultralytics

    m = copy.deepcopy(model).float().eval()  # requires_grad kept: torch's attention takes another kernel without it
    ckpt = {
        "date": datetime.now().isoformat(),
        "version": ultralytics.__version__,
        "model": m,
        "ema": None,
        "train_args": {"task": "detect", **(train_args or {})},
        "rtdetr_prune": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_pt(path: Path) -> nn.Module:
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
    model = require_rtdetr(model.float().eval(), str(path))
    # Ultralytics saves training checkpoints at half precision, the decoder's cached anchors included (as a
    # plain attribute, they come back rounded): forget them, so the next forward recomputes them in float32,
    # as training did and as a model rebuilt from the safe format does.
    model.model[-1].shapes = []
    return model


def _load_failure(e: BaseException) -> str:
    """What went wrong loading a checkpoint, and the fix, in one sentence."""
    if isinstance(e, ModuleNotFoundError):
        return f"it needs the module '{e.name}', which is not importable here. Install it, or load it with --plugin."
    text = str(e)
    if "not a loadable checkpoint" in text or isinstance(e, EOFError):
        return "the file is empty, truncated or corrupted. Re-save or re-copy it."
    return f"{first_line(e, width=160, with_type=False)}. Re-save it with Ultralytics or rtdetr-prune."
