"""Model families, and one loader for every model spec the user can give.

Each family (:class:`~rtdetr_prune.models.family.ModelFamily`) registers itself here when its
folder is imported; ``rtdetr_prune``'s own ``__init__`` imports the built-in ones.

Example:
    >>> from rtdetr_prune.models import family_of, load_model
    >>> model = load_model("rtdetr-tiny", nc=3)
    >>> family_of(model).count(model, imgsz=160)  # (params, GFLOPs)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rtdetr_prune.errors import UserError, suggest
from rtdetr_prune.models.family import Adapter, ModelFamily, Protected

_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Make a family known (idempotent per name); the first registered is asked first."""
    _FAMILIES.setdefault(family.name, family)
    return family


def families() -> list[ModelFamily]:
    return list(_FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    """A family by its name (as recorded in saved models)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UserError(f"Unknown model family '{name}'.{suggest(name, _FAMILIES)} "
                        f"Known families: {', '.join(_FAMILIES)}.") from None


def family_of(model: nn.Module) -> ModelFamily:
    """The family a model object belongs to.

    Raises:
        UserError: no registered family owns it.
    """
    for family in _FAMILIES.values():
        if family.owns(model):
            return family
    raise UserError(f"{type(model).__name__} is not a model rtdetr-prune knows: give an RT-DETR "
                    f"({', '.join(_FAMILIES)}), loaded with rtdetr_prune.load_model.")


def adapter_of(model: nn.Module) -> Adapter:
    """The :class:`Adapter` of a model object."""
    return family_of(model).adapter(model)


def zoo_names() -> list[str]:
    """Model names every family builds without a file."""
    return [n for f in _FAMILIES.values() for n in f.names()]


def load_model(spec: str | Path | nn.Module, nc: int | None = None) -> nn.Module:
    """Build or load a model of any registered family.

    Args:
        spec: a zoo name (``rtdetr-r18``), a config or checkpoint file, a saved model directory, or a
            model object (checked and returned as is). ``.pt`` files are pickles: load only files you trust.
        nc: number of classes for a model built from a config; ignored for saved models.

    Returns:
        The model, float32, eval mode.

    Raises:
        UserError: nothing recognizes the spec, or it cannot be loaded (the message says why).
    """
    if isinstance(spec, nn.Module):
        family_of(spec)
        return spec
    text = str(spec)
    for family in _FAMILIES.values():
        if family.recognizes(text):
            return family.load(text, nc)
    if Path(text).exists():
        raise UserError(f"'{text}' is not a model rtdetr-prune can load. Give a zoo name ({', '.join(zoo_names())}), "
                        "an RT-DETR .yaml, a .pt checkpoint, a saved model directory, or a transformers RT-DETR folder "
                        "or config.json.")
    raise UserError(f"Unknown model '{text}'.{suggest(text, zoo_names())} Give a zoo name ({', '.join(zoo_names())}), "
                    "an RT-DETR .yaml, a .pt checkpoint, a pruned-model directory, or a transformers RT-DETR folder or "
                    "config.json.")


__all__ = ["Adapter", "ModelFamily", "Protected", "adapter_of", "families", "family_of", "get_family",
           "load_model", "register", "zoo_names"]
