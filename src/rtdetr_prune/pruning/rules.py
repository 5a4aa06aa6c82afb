"""Teach the toolkit about module types it does not know, without touching its source.

Three kinds of rule, registered per module class (exact class: a subclass needs its own rule):
- ``protect(cls, reason)``: keep every channel group that touches an instance whole, with a reason;
- ``prune_rule(cls, pruner)``: a Torch-Pruning layer pruner (a ``tp.pruner.BasePruningFunc`` instance)
  saying how the module's input and output channels are removed; the module is then one leaf for
  tracing (Torch-Pruning does not look inside it);
- ``rewrite(cls, fn)``: replace each instance, before pruning, by ``fn(module)``, a prunable module
  with identical outputs (for example a ``chunk`` of one conv's output into two convs).

Rules can live in the user's own file, loaded with ``load_plugin`` (CLI: ``--plugin my_modules.py``).
The toolkit registers its own rewrites for Ultralytics blocks (:mod:`rtdetr_prune.models.ultralytics.rewrites`) the
same way; ``unregister`` removes any rule, built-in or not. ``scoped()`` undoes every registration
made inside it (tests, trying a rule out). See docs/custom-structures.md.

Example:
    >>> from rtdetr_prune import rules
    >>> rules.protect(MyAttention, "head-coupled width; rewrite it with per-head q/k/v convs to prune it")
    >>> with rules.scoped():
    ...     rules.prune_rule(MyScale, MyScalePruner())  # registered only inside the block
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from rtdetr_prune.errors import UserError

_PROTECTED: dict[type, str] = {}
_PRUNERS: dict[type, object] = {}
_REWRITES: dict[type, Callable[[nn.Module], nn.Module]] = {}
_IMPORTED: list[str] = []  # module names load_plugin imported, in order (scoped() forgets those imported inside it)
PLUGINS_ENV = "RTDETR_PRUNE_PLUGINS"  # plugin files loaded in this process, for its child processes (DDP workers)
REWRITTEN_FROM = "_rtdetr_prune_rewritten_from"  # attribute set on each module a rewrite produced


def protect(cls: type, reason: str) -> None:
    """Never prune the channels of ``cls`` instances (nor anything coupled to them); ``check`` shows ``reason``."""
    _require_module_class(cls, "protect")
    if not isinstance(reason, str) or not reason.strip():
        raise UserError(f"protect({cls.__name__}, reason): give the reason in words; `check` shows it to users.")
    _PROTECTED[cls] = reason.strip()


def prune_rule(cls: type, pruner) -> None:
    """Prune ``cls`` instances with a Torch-Pruning layer pruner (an instance of a ``BasePruningFunc`` subclass).

    The pruner's ``prune_out_channels(layer, idxs)`` and ``prune_in_channels(layer, idxs)`` remove
    channels from the module in place and return it; ``get_out_channels``/``get_in_channels`` give
    its widths. Set ``prune_in_channels = prune_out_channels`` in the class when input and output
    channels are the same channels (a residual block): Torch-Pruning then couples them.
    """
    import torch_pruning as tp

    _require_module_class(cls, "prune_rule")
    if isinstance(pruner, type):
        raise UserError(f"prune_rule({cls.__name__}, {pruner.__name__}): pass an instance, "
                        f"{pruner.__name__}(), not the class.")
    if not isinstance(pruner, tp.pruner.BasePruningFunc):
        raise UserError(f"prune_rule({cls.__name__}, ...): the pruner must subclass "
                        f"torch_pruning.pruner.BasePruningFunc (got {type(pruner).__name__}).")
    _PRUNERS[cls] = pruner


def rewrite(cls: type, fn: Callable[[nn.Module], nn.Module]) -> None:
    """Before pruning, replace every ``cls`` instance by ``fn(instance)`` (same outputs, prunable)."""
    _require_module_class(cls, "rewrite")
    if not callable(fn):
        raise UserError(f"rewrite({cls.__name__}, fn): fn must be a function taking the module and "
                        "returning its replacement.")
    _REWRITES[cls] = fn


def unregister(cls: type) -> None:
    """Remove every rule (protect, prune_rule, rewrite) for ``cls``, built-in ones included."""
    for table in (_PROTECTED, _PRUNERS, _REWRITES):
        table.pop(cls, None)


@contextlib.contextmanager
def scoped() -> Iterator[None]:
    """Undo, on exit, every registration and unregistration made inside the ``with`` block, forget the plugin
    files first imported inside it (so that loading one again imports it again and registers its rules again,
    instead of returning the module whose rules were undone), and stop passing them to child processes."""
    saved = [dict(t) for t in (_PROTECTED, _PRUNERS, _REWRITES)]
    plugins = os.environ.get(PLUGINS_ENV)
    imported = len(_IMPORTED)
    try:
        yield
    finally:
        for table, old in zip((_PROTECTED, _PRUNERS, _REWRITES), saved):
            table.clear()
            table.update(old)
        for name in _IMPORTED[imported:]:
            sys.modules.pop(name, None)
        del _IMPORTED[imported:]
        if plugins is None:
            os.environ.pop(PLUGINS_ENV, None)
        else:
            os.environ[PLUGINS_ENV] = plugins


def protected_types() -> dict[type, str]:
    return dict(_PROTECTED)


def customized_pruners() -> dict[type, object]:
    return dict(_PRUNERS)


def rewrites() -> dict[type, Callable[[nn.Module], nn.Module]]:
    return dict(_REWRITES)


def apply_rewrites(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Replace instances of registered types in place; return the replaced modules' names.

    Args:
        model: any module (the detection model).
        names: rewrite only the modules of these names (to rebuild a model saved after rewriting),
            and fail if one of them has no registered rewrite; all registered types when None.

    Each replacement keeps Ultralytics' routing attributes (``i``, ``f``, ``type``, ``np``) of the
    module it replaces and is marked with the class it came from (see :func:`rewritten_names`).
    Modules a rewrite produced are not rewritten again, so applying twice changes nothing.
    """
    wanted = None if names is None else set(names)
    done: list[str] = []
    _rewrite_children(model, "", wanted, done)
    if wanted is not None and set(done) != wanted:
        missing = sorted(wanted - set(done))
        raise UserError(f"The model was saved with rewritten layers {missing}, but no rewrite is registered for "
                        "their types here. Load the plugin that registers it (--plugin FILE.py).")
    return done


def rewritten_names(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that a rewrite produced (to record when saving it)."""
    return [name for name, m in model.named_modules() if getattr(m, REWRITTEN_FROM, None)]


def _rewrite_children(parent: nn.Module, prefix: str, wanted: set[str] | None, done: list[str]) -> None:
    for child_name, child in list(parent.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        fn = _REWRITES.get(type(child))
        if fn is not None and not getattr(child, REWRITTEN_FROM, None) and (wanted is None or name in wanted):
            new = fn(child)
            if not isinstance(new, nn.Module):
                raise UserError(f"The rewrite registered for {type(child).__name__} returned {type(new).__name__}, "
                                "not a torch module.")
            for k in ("i", "f", "type", "np"):  # Ultralytics' routing attributes on top-level layers
                if hasattr(child, k) and not hasattr(new, k):
                    setattr(new, k, getattr(child, k))
            setattr(new, REWRITTEN_FROM, f"{type(child).__module__}.{type(child).__qualname__}")
            setattr(parent, child_name, new)
            done.append(name)
            child = new
        _rewrite_children(child, name, wanted, done)


def load_plugin(path: str | Path):
    """Import a user's Python file (which defines modules and registers rules for them); return the module.

    The file is imported under its file name (``my_rules.py`` as ``my_rules``), with its folder on
    ``sys.path`` while it runs, so it can import modules next to it. Loading the same file again
    returns the module already loaded: its classes, and the rules keyed by them, stay the same.
    Its path is added to the ``RTDETR_PRUNE_PLUGINS`` environment variable, so that processes started
    from this one (Ultralytics' DDP workers) load it too (:func:`load_env_plugins`).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Plugin '{path}' not found. Give the path of a Python file that registers rules.")
    loaded = sys.modules.get(p.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == p.resolve():
        _pass_on(p)
        return loaded
    spec = importlib.util.spec_from_file_location(p.stem, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[p.stem] = module  # so pickled models referencing its classes can be loaded
    folder = str(p.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file is theirs to fix
        sys.modules.pop(p.stem, None)
        raise UserError(f"Plugin '{path}' failed to import: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(folder)
    _IMPORTED.append(p.stem)
    _pass_on(p)
    return module


def _pass_on(path: Path) -> None:
    """Name ``path`` in ``RTDETR_PRUNE_PLUGINS``, which processes started from this one inherit."""
    known = [x for x in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if x]
    if str(path.resolve()) not in known:
        os.environ[PLUGINS_ENV] = os.pathsep.join([*known, str(path.resolve())])


def load_env_plugins() -> None:
    """Load the plugin files named in ``RTDETR_PRUNE_PLUGINS`` (set by the process that started this one)."""
    for path in os.environ.get(PLUGINS_ENV, "").split(os.pathsep):
        if path:
            load_plugin(path)


def _require_module_class(cls, verb: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"{verb}(cls, ...): cls must be a torch.nn.Module subclass (got {cls!r}).")
