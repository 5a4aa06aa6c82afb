"""Teach the toolkit about module types it does not know, without touching its source.

Three kinds of rule, registered per module class:
- ``protect(cls, reason)``: keep every channel group that touches an instance whole, with a reason;
- ``prune_rule(cls, pruner)``: a Torch-Pruning layer pruner (``tp.pruner.BasePruningFunc``) saying
  how the module's input and output channels are removed; the module is then a leaf for tracing;
- ``rewrite(cls, fn)``: replace each instance, before pruning, by ``fn(module)``, a prunable module
  with identical outputs (for example a ``chunk`` into two convolutions).

Rules can live in the user's own file, loaded with ``load_plugin`` (CLI: ``--plugin my_modules.py``).

Example:
    >>> from rtdetr_prune import rules
    >>> rules.protect(MyAttention, "head-coupled width; rewrite it with separate q/k/v convs to prune it")
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from rtdetr_prune.errors import UserError

_PROTECTED: dict[type, str] = {}
_PRUNERS: dict[type, object] = {}
_REWRITES: dict[type, Callable[[nn.Module], nn.Module]] = {}


def protect(cls: type, reason: str) -> None:
    """Never prune the channels of ``cls`` instances (nor anything coupled to them)."""
    _PROTECTED[cls] = reason


def prune_rule(cls: type, pruner) -> None:
    """Prune ``cls`` instances with a Torch-Pruning layer pruner (``BasePruningFunc`` instance)."""
    _PRUNERS[cls] = pruner


def rewrite(cls: type, fn: Callable[[nn.Module], nn.Module]) -> None:
    """Before pruning, replace every ``cls`` instance by ``fn(instance)`` (same outputs, prunable)."""
    _REWRITES[cls] = fn


def protected_types() -> dict[type, str]:
    return dict(_PROTECTED)


def customized_pruners() -> dict[type, object]:
    return dict(_PRUNERS)


def apply_rewrites(model: nn.Module) -> list[str]:
    """Replace registered module types in place; return the names of the replaced modules."""
    if not _REWRITES:
        return []
    done = []
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            fn = _REWRITES.get(type(child))
            if fn is not None:
                new = fn(child)
                for k in ("i", "f", "type", "np"):  # Ultralytics' routing attributes on top-level layers
                    if hasattr(child, k) and not hasattr(new, k):
                        setattr(new, k, getattr(child, k))
                setattr(parent, child_name, new)
                done.append(f"{name}.{child_name}" if name else child_name)
    return done


def load_plugin(path: str | Path) -> None:
    """Import a user's Python file (which defines modules and registers rules for them)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Plugin '{path}' not found. Give the path of a Python file that registers rules.")
    spec = importlib.util.spec_from_file_location(p.stem, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[p.stem] = module  # so pickled models referencing its classes can be loaded
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file is theirs to fix
        raise UserError(f"Plugin '{path}' failed to import: {type(e).__name__}: {e}") from e
