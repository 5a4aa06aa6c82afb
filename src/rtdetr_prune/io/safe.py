"""A safe file format for (pruned) models: weights in safetensors, architecture in JSON. No pickle.

A ``.pt`` checkpoint is a pickle, and loading one runs code from it. A safe model is a directory::

    model.safetensors   every parameter and buffer (BatchNorm statistics included), float32
    model.json          {"format": "rtdetr-prune-safe/1", "family": "ultralytics", "widths": {layer: size
                         attributes}, "weights_sha256": ..., "meta": ..., plus what the family needs to
                         build the unpruned model (an Ultralytics YAML, a transformers config...)}

This module holds what every family shares: writing and checking the two files, recording each
layer's size attributes, and shrinking a freshly built model to them. A family builds the unpruned
model from its part of the spec (``models/<family>/safe.py``), then calls :func:`shrink_to` and loads
the weights with ``strict=True``. Layer sizes that tensors do not imply (conv groups, attention
heads) are recorded as attributes, and every layer is checked against its tensors' shapes, so files
that do not fit together fail with the layer's name. The JSON is written last, so a directory holding
``model.json`` is complete.

Example:
    >>> write_safe(model, "runs/prune/exp/weights/pruned_safe", {"family": "ultralytics", ...})
    >>> spec, tensors, spec_path = read_safe("runs/prune/exp/weights/pruned_safe")
"""

from __future__ import annotations

import hashlib
import json
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.errors import UserError, first_line
from rtdetr_prune.io.files import atomic_path, write_json

FORMAT = "rtdetr-prune-safe/1"
SPEC_NAME, WEIGHTS_NAME = "model.json", "model.safetensors"
DEFAULT_FAMILY = "ultralytics"  # files written before families were recorded are Ultralytics models

# The layer types whose size lives in attributes as well as in tensor shapes, and those attributes.
# Pruning changes both; loading sets the attributes from model.json. First match wins (MHA first:
# its out_proj is a Linear of its own, listed separately).
SIZE_ATTRS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.MultiheadAttention, ("embed_dim", "kdim", "vdim", "num_heads", "head_dim", "_qkv_same_embed_dim")),
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.Linear, ("in_features", "out_features")),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.Embedding, ("num_embeddings", "embedding_dim")),
)


def write_safe(model: nn.Module, out_dir: str | Path, spec: dict) -> Path:
    """Write ``model``'s tensors and ``spec`` (plus format, widths and checksum) into ``out_dir``, atomically.

    Args:
        model: the model to save, pruned or not.
        out_dir: directory to write (created; an earlier save there is replaced).
        spec: the family's JSON-serializable record (``family`` and what it needs to rebuild the model).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' is a file; give a directory to save the safe model into.")
    spec = {"format": FORMAT, **spec, "widths": layer_widths(model), "weights_sha256": ""}
    _require_json(spec)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        t = (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).contiguous()
        if t.untyped_storage().data_ptr() in seen:  # a tied weight (one tensor, two names: transformers' RT-DETRv2
            t = t.clone()  # heads): safetensors stores no shared memory, so each name gets a copy; loading ties them
        seen.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPEC_NAME).unlink(missing_ok=True)  # the pair is incomplete until the new JSON lands
    data = _safetensors().save(tensors, metadata={"format": FORMAT})
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    spec["weights_sha256"] = hashlib.sha256(data).hexdigest()
    write_json(out_dir / SPEC_NAME, spec)
    return out_dir


def read_safe(path: str | Path, required: dict[str, type] | None = None) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """Read and check a safe model: (spec, tensors, path of model.json).

    Args:
        path: the saved directory, or its ``model.json`` (the weights are the ``.safetensors`` file
            of the same name next to it).
        required: the family's own spec keys and their JSON types, checked too.

    Raises:
        UserError: a missing, corrupt or unknown-format file, or files that do not belong together.
    """
    spec_path = spec_path_of(Path(path))
    spec = read_spec(spec_path, required)
    tensors = _read_weights(spec_path.with_suffix(".safetensors"), spec["weights_sha256"])
    return spec, tensors, spec_path


def is_safe_dir(path: Path) -> bool:
    """Whether ``path`` is a safe-model directory or its model.json (complete or not)."""
    return (path.is_dir() and (path / SPEC_NAME).is_file()) or (path.suffix == ".json" and path.name == SPEC_NAME)


def family_name(path: Path) -> str | None:
    """The family recorded in a safe model's model.json; None when it cannot be read (the loader says why)."""
    try:
        spec = json.loads(spec_path_of(path).read_text())
    except (UserError, OSError, ValueError):
        return None
    return spec.get("family", DEFAULT_FAMILY) if isinstance(spec, dict) else None


def load_weights(model: nn.Module, spec: dict, tensors: dict[str, torch.Tensor], spec_path: Path) -> nn.Module:
    """Shrink ``model`` (built unpruned from the spec) to the saved widths and load the weights strictly."""
    shrink_to(model, spec["widths"], tensors)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"The weights do not fit the architecture in '{spec_path}' ({first_line(e, 3, with_type=False)}). "
                        "The two files come from different models: re-save both.") from e
    return model


def layer_widths(model: nn.Module) -> dict[str, dict]:
    """Size attributes of every sized layer, by module name: ``{"model.4.conv": {"type": "Conv2d",
    "in_channels": 64, "out_channels": 48, "groups": 1}, ...}`` (JSON-ready)."""
    widths = {}
    for name, m in model.named_modules():
        attrs = _size_attrs(m)
        if attrs:
            widths[name] = {"type": type(m).__name__, **{a: _jsonable(getattr(m, a)) for a in attrs}}
    return widths


def shrink_to(model: nn.Module, widths: dict[str, dict], tensors: dict[str, torch.Tensor]) -> None:
    """Resize ``model``'s layers in place to ``widths`` and its tensors to the shapes in ``tensors``.

    Tensor values are left uninitialised: load ``tensors`` afterwards. Every sized layer is checked
    against its tensors' shapes, so files that disagree fail here with the layer's name. Tensors of other
    modules (a user's module with a per-channel parameter of its own, pruned by its rule) take their saved
    shapes as they are: right for modules whose forward reads widths from their tensors; a module that also
    caches a width elsewhere is not rebuilt correctly, which is why the pipeline reloads every safe copy it
    writes and compares its outputs with the model it saved.
    """
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        _set_size(name, modules.get(name), attrs)
    for name, m in modules.items():
        for tname, t in chain(m.named_parameters(recurse=False), m.named_buffers(recurse=False)):
            saved = tensors.get(f"{name}.{tname}" if name else tname)
            if saved is None or saved.shape == t.shape:
                continue
            if saved.dim() != t.dim():
                raise UserError(f"Layer '{name}': '{tname}' has {saved.dim()} dimensions in the weights but {t.dim()} in "
                                "the rebuilt model. The files come from different models: re-save both.")
            _resize_tensor(m, tname, saved.shape)  # a raw parameter of a module of the user's (see below)
        if _size_attrs(m):
            _check_shapes(name, m)


def spec_path_of(path: Path) -> Path:
    if path.is_dir():
        if not (path / SPEC_NAME).is_file():
            raise UserError(f"'{path}' has no {SPEC_NAME}: it is not a safe model directory, or its save did not "
                            "finish. Give a directory written by rtdetr-prune (re-save the model if it was interrupted).")
        return path / SPEC_NAME
    if not path.is_file():
        raise UserError(f"Safe model '{path}' not found. Give a directory written by rtdetr-prune, or its {SPEC_NAME}.")
    return path


def read_spec(path: Path, required: dict[str, type] | None = None) -> dict:
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e}); the file is corrupt. Re-save the model.") from e
    fmt = spec.get("format") if isinstance(spec, dict) else None
    if fmt != FORMAT:
        hint = ("a different version of the format: use the rtdetr-prune version that wrote it, or re-save it"
                if str(fmt).startswith("rtdetr-prune-safe/") else "not a model spec written by rtdetr-prune")
        raise UserError(f"'{path}' has format {fmt!r}, but this rtdetr-prune reads {FORMAT!r}: {hint}.")
    kinds = {"widths": dict, "weights_sha256": str, **(required or {})}
    bad = [k for k, kind in kinds.items() if not isinstance(spec.get(k), kind)]
    if bad:
        raise UserError(f"'{path}' lacks valid {', '.join(bad)} entries; the file is damaged. Re-save the model.")
    return spec


def _read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"Weights file '{path}' not found. It is saved next to '{path.with_suffix('.json').name}': "
                        "copy both files together.")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"'{path}' is not the weights file saved with '{path.with_suffix('.json').name}' (its SHA-256 "
                        "differs): it is corrupt or comes from another save. Copy both files from the same save.")
    try:
        return _safetensors().load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any malformed file
        raise UserError(f"'{path}' is not a readable safetensors file ({first_line(e, 3, with_type=False)}). Re-save the model.") from e


def _set_size(name: str, m: nn.Module | None, attrs: dict) -> None:
    if m is None or type(m).__name__ != attrs.get("type"):
        found = "nothing" if m is None else f"a {type(m).__name__}"
        raise UserError(f"model.json gives widths for a {attrs.get('type')} '{name}', but its config builds {found} "
                        "there. The spec is damaged or edited by hand: re-save the model.")
    for a in _size_attrs(m):
        if a not in attrs:
            raise UserError(f"model.json's widths for '{name}' lack '{a}'; re-save the model.")
        setattr(m, a, tuple(attrs[a]) if isinstance(attrs[a], list) else attrs[a])


def _resize_tensor(m: nn.Module, tname: str, shape: torch.Size) -> None:
    old = getattr(m, tname)
    new = torch.empty(shape, dtype=old.dtype)
    setattr(m, tname, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def _check_shapes(name: str, m: nn.Module) -> None:
    """Raise unless ``m``'s tensors have the shapes its size attributes imply."""
    attrs = {a: getattr(m, a) for a in _size_attrs(m)}
    fix = "The two files come from different models, or were edited: re-save both."
    for tname, want in _expected_shapes(m).items():
        t = getattr(m, tname, None)
        if want is None:
            raise UserError(f"Layer '{name}' ({type(m).__name__}) has impossible widths in model.json: {attrs}. {fix}")
        if t is not None and tuple(t.shape) != want:
            raise UserError(f"Layer '{name}' ({type(m).__name__}): '{tname}' has shape {tuple(t.shape)} in the weights, "
                            f"but its widths in model.json {attrs} need {want}. {fix}")


def _expected_shapes(m: nn.Module) -> dict[str, tuple[int, ...] | None]:
    """Tensor name -> the shape the module's size attributes imply (``None``: the attributes are inconsistent)."""
    if isinstance(m, nn.MultiheadAttention):
        e = m.embed_dim
        if m.num_heads * m.head_dim != e:
            return {"in_proj_weight": None}
        return {"in_proj_weight": (3 * e, e), "in_proj_bias": (3 * e,), "q_proj_weight": (e, e),
                "k_proj_weight": (e, m.kdim), "v_proj_weight": (e, m.vdim), "bias_k": (1, 1, e), "bias_v": (1, 1, e)}
    if isinstance(m, nn.modules.conv._ConvNd):
        c_in, c_out, g = m.in_channels, m.out_channels, m.groups
        if g < 1 or c_in % g or c_out % g:
            return {"weight": None}
        w = (c_in, c_out // g) if m.transposed else (c_out, c_in // g)
        return {"weight": (*w, *m.kernel_size), "bias": (c_out,)}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return dict.fromkeys(("weight", "bias", "running_mean", "running_var"), (m.num_features,))
    if isinstance(m, nn.Linear):
        return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    if isinstance(m, nn.LayerNorm):
        return dict.fromkeys(("weight", "bias"), tuple(m.normalized_shape))
    if isinstance(m, nn.Embedding):
        return {"weight": (m.num_embeddings, m.embedding_dim)}
    return {}


def _size_attrs(m: nn.Module) -> tuple[str, ...]:
    return next((attrs for kind, attrs in SIZE_ATTRS if isinstance(m, kind)), ())


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _require_json(spec: dict) -> None:
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as e:
        raise TypeError(f"Saving a safe model: the model's YAML and `meta` must be JSON-serializable ({e}); "
                        "convert paths and arrays to strings and lists first.") from e


def _safetensors():
    import safetensors.torch  # late: only the safe format needs it

    return safetensors.torch
