"""A safe file format for (pruned) RT-DETR models: weights in safetensors, architecture in JSON.

A ``.pt`` checkpoint is a pickle, and loading one runs code from it. A safe model is a directory::

    model.safetensors   every parameter and buffer (BatchNorm statistics included), float32
    model.json          {"format": "rtdetr-prune-safe/1", "yaml": ..., "nc": ..., "names": ...,
                         "widths": {layer: size attributes}, "weights_sha256": ..., "meta": ...}

Loading builds the unpruned model from the Ultralytics YAML, shrinks every layer to the recorded
widths (conv groups and attention heads included: they are not implied by tensor shapes), checks
each layer against the tensors' shapes, and loads the weights with ``strict=True``. Nothing is
unpickled. The JSON is written last, so a directory holding ``model.json`` is complete.

Example:
    >>> save_safe(pruned, "runs/prune/exp/weights/pruned", meta={"method": "lamp"})
    PosixPath('runs/prune/exp/weights/pruned')
    >>> model = load_safe("runs/prune/exp/weights/pruned")  # or the path of its model.json
"""

from __future__ import annotations

import copy
import hashlib
import json
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune import rules
from rtdetr_prune.adapter import RTDETRAdapter
from rtdetr_prune.errors import UserError
from rtdetr_prune.files import atomic_path, write_json
from rtdetr_prune.zoo import resnet_vd  # noqa: F401  (the zoo's YAMLs name these backbones)

FORMAT = "rtdetr-prune-safe/1"
SPEC_NAME, WEIGHTS_NAME = "model.json", "model.safetensors"

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


def save_safe(model: nn.Module, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Save ``model`` as ``out_dir/model.safetensors`` plus ``out_dir/model.json``, atomically.

    Args:
        model: an Ultralytics RT-DETR detection model built from a YAML (``model.yaml``), pruned or not.
        out_dir: directory to write (created; an earlier save there is replaced).
        meta: JSON-serializable record of our own (method, speed-up, history), stored under ``"meta"``.

    Returns:
        ``out_dir``, which :func:`load_safe` (and ``rtdetr_prune.zoo.load_model``) accept.

    Example:
        >>> save_safe(load_model("rtdetr-tiny", nc=3), tmp_path / "tiny")
    """
    if not isinstance(getattr(model, "yaml", None), dict):
        raise UserError("save_safe needs an Ultralytics model built from a YAML (its `model.yaml` dict); "
                        "load it with rtdetr_prune.zoo.load_model.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' is a file; give a directory to save the safe model into.")
    spec = {
        "format": FORMAT,
        "yaml": model.yaml,
        "nc": int(getattr(model, "nc", None) or model.model[-1].nc),
        "names": {str(k): v for k, v in getattr(model, "names", {}).items()},
        "widths": layer_widths(model),
        "rewritten": rules.rewritten_names(model),  # rebuilt from the YAML, then rewritten again before shrinking
        "weights_sha256": "",
        "meta": meta or {},
        "versions": _versions(),
    }
    _require_json(spec)
    tensors = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in model.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPEC_NAME).unlink(missing_ok=True)  # the pair is incomplete until the new JSON lands
    data = _safetensors().save(tensors, metadata={"format": FORMAT})
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    spec["weights_sha256"] = hashlib.sha256(data).hexdigest()
    write_json(out_dir / SPEC_NAME, spec)
    return out_dir


def load_safe(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_safe`, without unpickling anything.

    Args:
        path: the saved directory, or its ``model.json`` (the weights are the ``.safetensors`` file
            of the same name next to it).

    Returns:
        The ``RTDETRDetectionModel``, float32, eval mode, with the saved (pruned) widths and weights.

    Raises:
        UserError: a missing, corrupt or unknown-format file, or files that do not fit together.

    Example:
        >>> model = load_safe("runs/prune/exp/weights/pruned")
    """
    spec_path = _spec_path(Path(path))
    spec = _read_spec(spec_path)
    tensors = _read_weights(spec_path.with_suffix(".safetensors"), spec["weights_sha256"])
    model = _build(spec, spec_path)
    rules.apply_rewrites(model, names=spec.get("rewritten", []))
    shrink_to(model, spec["widths"], tensors)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"The weights do not fit the architecture in '{spec_path}' ({_first_lines(e)}). "
                        "The two files come from different models: re-save both with save_safe.") from e
    RTDETRAdapter.after_prune(model)
    model.yaml = copy.deepcopy(spec["yaml"])  # as saved (the build may have dropped a pretrained-weights name)
    model.nc = spec["nc"]
    model.names = {int(k): v for k, v in spec["names"].items()}
    return model.float().eval()


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
    against its tensors' shapes, so files that disagree fail here with the layer's name.
    """
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        _set_size(name, modules.get(name), attrs)
    for name, m in modules.items():
        for tname, t in chain(m.named_parameters(recurse=False), m.named_buffers(recurse=False)):
            saved = tensors.get(f"{name}.{tname}" if name else tname)
            if saved is None or saved.shape == t.shape:
                continue
            if not _size_attrs(m):
                raise UserError(f"Layer '{name}' ({type(m).__name__}) has a pruned shape, but the safe format only "
                                "rebuilds Conv, BatchNorm, Linear, LayerNorm, Embedding and MultiheadAttention layers. "
                                "Save this model as a .pt checkpoint instead (rtdetr_prune.checkpoint.save_checkpoint).")
            _resize_tensor(m, tname, saved.shape)
        if _size_attrs(m):
            _check_shapes(name, m)


def _spec_path(path: Path) -> Path:
    if path.is_dir():
        if not (path / SPEC_NAME).is_file():
            raise UserError(f"'{path}' has no {SPEC_NAME}: it is not a safe model directory, or its save did not "
                            "finish. Give a directory written by save_safe (re-save the model if it was interrupted).")
        return path / SPEC_NAME
    if not path.is_file():
        raise UserError(f"Safe model '{path}' not found. Give a directory written by save_safe, or its {SPEC_NAME}.")
    return path


def _read_spec(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e}); the file is corrupt. Re-save the model with save_safe.") from e
    fmt = spec.get("format") if isinstance(spec, dict) else None
    if fmt != FORMAT:
        hint = ("a different version of the format: use the rtdetr-prune version that wrote it, or re-save it"
                if str(fmt).startswith("rtdetr-prune-safe/") else "not a model spec written by rtdetr_prune.safe_io.save_safe")
        raise UserError(f"'{path}' has format {fmt!r}, but this rtdetr-prune reads {FORMAT!r}: {hint}.")
    kinds = {"yaml": dict, "nc": int, "names": dict, "widths": dict, "weights_sha256": str}
    bad = [k for k, kind in kinds.items() if not isinstance(spec.get(k), kind)]
    if bad:
        raise UserError(f"'{path}' lacks valid {', '.join(bad)} entries; the file is damaged. Re-save the model with save_safe.")
    return spec


def _read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"Weights file '{path}' not found. save_safe writes it next to '{path.with_suffix('.json').name}': "
                        "copy both files together.")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"'{path}' is not the weights file saved with '{path.with_suffix('.json').name}' (its SHA-256 "
                        "differs): it is corrupt or comes from another save. Copy both files from the same save_safe call.")
    try:
        return _safetensors().load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any malformed file
        raise UserError(f"'{path}' is not a readable safetensors file ({_first_lines(e)}). Re-save the model.") from e


def _build(spec: dict, label: Path) -> nn.Module:
    """The unpruned model the YAML describes, without downloading any pretrained backbone."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    try:
        return RTDETRDetectionModel(_without_pretrained(spec["yaml"]), nc=spec["nc"], verbose=False)
    except KeyError as e:  # parse_model looks layer names up in its own namespace
        raise UserError(f"The YAML in '{label}' names a layer Ultralytics does not know: {e}. Import the module that "
                        "defines it before loading (e.g. with --plugin my_modules.py).") from e
    except (TypeError, ValueError, IndexError) as e:
        raise UserError(f"The YAML in '{label}' does not build a model ({_first_lines(e)}). Re-save the model.") from e


def _without_pretrained(yaml: dict) -> dict:
    """A copy of ``yaml`` whose TorchVision backbones load no pretrained weights (ours replace them;
    its ``weights`` argument defaults to a download)."""
    yaml = copy.deepcopy(yaml)
    for layer in chain(yaml.get("backbone", []), yaml.get("head", [])):
        if len(layer) > 3 and layer[2] == "TorchVision" and len(layer[3]) >= 2:
            layer[3] = [*layer[3][:2], None, *layer[3][3:]]
    return yaml


def _set_size(name: str, m: nn.Module | None, attrs: dict) -> None:
    if m is None or type(m).__name__ != attrs.get("type"):
        found = "nothing" if m is None else f"a {type(m).__name__}"
        raise UserError(f"model.json gives widths for a {attrs.get('type')} '{name}', but its YAML builds {found} there. "
                        "The spec is damaged or edited by hand: re-save the model with save_safe.")
    for a in _size_attrs(m):
        if a not in attrs:
            raise UserError(f"model.json's widths for '{name}' lack '{a}'; re-save the model with save_safe.")
        setattr(m, a, tuple(attrs[a]) if isinstance(attrs[a], list) else attrs[a])


def _resize_tensor(m: nn.Module, tname: str, shape: torch.Size) -> None:
    old = getattr(m, tname)
    new = torch.empty(shape, dtype=old.dtype)
    setattr(m, tname, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def _check_shapes(name: str, m: nn.Module) -> None:
    """Raise unless ``m``'s tensors have the shapes its size attributes imply."""
    attrs = {a: getattr(m, a) for a in _size_attrs(m)}
    fix = "The two files come from different models, or were edited: re-save both with save_safe."
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
        raise TypeError(f"save_safe: the model's YAML and `meta` must be JSON-serializable ({e}); "
                        "convert paths and arrays to strings and lists first.") from e


def _versions() -> dict[str, str]:
    import ultralytics

    import rtdetr_prune

    return {"rtdetr_prune": rtdetr_prune.__version__, "ultralytics": ultralytics.__version__, "torch": torch.__version__}


def _safetensors():
    import safetensors.torch  # late: only the safe format needs it

    return safetensors.torch


def _first_lines(e: Exception, n: int = 3) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines[:n]) or type(e).__name__
