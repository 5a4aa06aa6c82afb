"""Transformers RT-DETR models by name, from a config, or from a ``save_pretrained`` folder. Nothing is downloaded.

The zoo's names build the architectures of the RT-DETR papers (the layouts of the ``PekingU/rtdetr_*`` and
``PekingU/rtdetr_v2_*`` configs) with random weights; a config file or a config-only folder builds any
RT-DETR or RT-DETRv2 config; a folder with weights loads them (``local_files_only``).

Every model comes back with its backbone's frozen BatchNorms turned into ordinary ``nn.BatchNorm2d`` layers
holding the same statistics and affine values (:func:`thaw_batchnorms`): Torch-Pruning knows how to slice
those, finetuning can train them, and the fused copy folds them into the convs. The config records it
(``freeze_backbone_batch_norms=False``), so transformers itself would build the same modules from it.

Example:
    >>> model = build("hf-rtdetr-r18vd", nc=80)  # an RTDetrForObjectDetection, random weights, eval mode
    >>> model = load_pretrained("runs/hf/my-finetuned-rtdetr")  # config.json + model.safetensors
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from rtdetr_prune.errors import UserError, first_line

MODEL_TYPES = {"rt_detr": "RTDetr", "rt_detr_v2": "RTDetrV2"}  # config model_type -> class-name prefix
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
INSTALL = "Install the transformers extra: pip install 'rtdetr-prune[transformers]' (transformers 5.x)."


def _resnet(layer_type: str, depths: list[int], hidden_sizes: list[int]) -> dict:
    return {"model_type": "rt_detr_resnet", "layer_type": layer_type, "depths": depths, "hidden_sizes": hidden_sizes,
            "embedding_size": 64, "out_indices": [2, 3, 4]}


_R18 = dict(backbone_config=_resnet("basic", [2, 2, 2, 2], [64, 128, 256, 512]), encoder_in_channels=[128, 256, 512],
            hidden_expansion=0.5, decoder_layers=3)
_R34 = dict(backbone_config=_resnet("basic", [3, 4, 6, 3], [64, 128, 256, 512]), encoder_in_channels=[128, 256, 512],
            hidden_expansion=0.5, decoder_layers=4)
_R50 = dict(backbone_config=_resnet("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
            encoder_in_channels=[512, 1024, 2048], hidden_expansion=1.0, decoder_layers=6)
_R101 = dict(backbone_config=_resnet("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
             encoder_in_channels=[512, 1024, 2048], encoder_hidden_dim=384, encoder_ffn_dim=2048,
             decoder_in_channels=[384, 384, 384], hidden_expansion=1.0, decoder_layers=6)
# For tests and quick trials: every part of the real thing (vd stem, shortcut convs, AIFI with 4 heads of 16
# channels, CSP blocks, a deformable decoder), a few hundred thousand parameters.
_TINY = dict(backbone_config={**_resnet("basic", [1, 1, 1, 1], [16, 32, 64, 128]), "embedding_size": 16},
             encoder_in_channels=[32, 64, 128], encoder_hidden_dim=64, encoder_ffn_dim=128, encoder_attention_heads=4,
             d_model=64, decoder_in_channels=[64, 64, 64], decoder_ffn_dim=128, decoder_layers=1,
             decoder_attention_heads=4, num_queries=30, num_denoising=10, hidden_expansion=0.5)

# name -> (config model_type, config values other than the defaults of transformers' config class)
ZOO: dict[str, tuple[str, dict]] = {
    "hf-rtdetr-tiny": ("rt_detr", _TINY),
    "hf-rtdetr-r18vd": ("rt_detr", _R18),
    "hf-rtdetr-r34vd": ("rt_detr", _R34),
    "hf-rtdetr-r50vd": ("rt_detr", _R50),
    "hf-rtdetr-r101vd": ("rt_detr", _R101),
    "hf-rtdetr-v2-tiny": ("rt_detr_v2", {**_TINY, "decoder_layers": 2}),  # v2 ties its box heads across layers: 2+
    "hf-rtdetr-v2-r18vd": ("rt_detr_v2", _R18),
    "hf-rtdetr-v2-r34vd": ("rt_detr_v2", _R34),
    "hf-rtdetr-v2-r50vd": ("rt_detr_v2", _R50),
    "hf-rtdetr-v2-r101vd": ("rt_detr_v2", _R101),
}


def classes(model_type: str) -> tuple[type, type]:
    """(config class, detection model class) of an RT-DETR ``model_type``."""
    try:
        import transformers
    except ImportError as e:
        raise UserError(f"Transformers RT-DETR models need the transformers package. {INSTALL}") from e
    prefix = MODEL_TYPES[model_type]
    return getattr(transformers, f"{prefix}Config"), getattr(transformers, f"{prefix}ForObjectDetection")


def build(name: str, nc: int | None = None) -> nn.Module:
    """A zoo model with random weights (float32, eval mode); ``nc`` classes (80 when None)."""
    model_type, values = ZOO[name]
    return from_config(model_type, dict(values), nc if nc is not None else 80)


def from_config_file(path: Path, nc: int | None = None) -> nn.Module:
    """A model built from a transformers RT-DETR ``config.json`` (a file, or a folder holding only the config),
    random weights; ``nc`` overrides the config's class count."""
    config = read_config(path)
    return from_config(config.pop("model_type"), config, nc)


def from_config(model_type: str, values: dict, nc: int | None) -> nn.Module:
    """Build from config values with random weights (transformers 5 builds the backbone from its config too)."""
    config_cls, model_cls = classes(model_type)
    values = {k: v for k, v in values.items() if k not in ("architectures", "transformers_version")}
    try:
        config = config_cls.from_dict(values)  # transformers 5 builds the backbone from its config: no weights fetched
        if nc is not None:
            config.num_labels = nc
        return thaw_batchnorms(model_cls(config)).float().eval()
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"The {model_type} config is not valid ({first_line(e, with_type=False)}). "
                        "Give a config.json written by transformers' save_pretrained.") from e


def read_config(path: Path) -> dict:
    """The JSON of a transformers RT-DETR config (``path``: the file or its folder), checked to be one."""
    file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"'{file}' is not a readable JSON config ({first_line(e, with_type=False)}).") from e
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        raise UserError(f"'{file}' is a transformers config for '{kind}', not RT-DETR: rtdetr-prune prunes "
                        f"{' and '.join(MODEL_TYPES)} detectors (RTDetrForObjectDetection and its V2).")
    return config


def has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in WEIGHT_FILES)


def load_pretrained(folder: Path) -> nn.Module:
    """Load a ``save_pretrained`` folder (config.json + weights) with transformers, from disk only.

    Raises:
        UserError: the weights do not fit the config (e.g. a pruned model written with ``save_pretrained``,
            whose config still describes the unpruned widths), or some are missing: transformers would fill
            those with random values, silently.
    """
    config = read_config(folder)
    _, model_cls = classes(config["model_type"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model, info = model_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except RuntimeError as e:  # transformers refuses tensors of other shapes than the config's (a report is printed)
        raise UserError(_misfit(folder, "tensors of other shapes than its config gives")) from e
    except (OSError, ValueError) as e:
        raise UserError(f"'{folder}' could not be loaded by transformers: {first_line(e, 2, with_type=False)}") from e
    missing = set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k
                                                    for k in info.get("mismatched_keys", ())}
    missing = {k for k in missing if not k.endswith("num_batches_tracked")}
    if missing:
        example = sorted(missing)[0]
        raise UserError(_misfit(folder, f"{len(missing)} tensors missing or of other shapes, e.g. '{example}'"))
    return thaw_batchnorms(model).float().eval()


def _misfit(folder: Path, what: str) -> str:
    return (f"The weights in '{folder}' do not fit its config.json ({what}), and transformers would fill those with "
            "random values. A pruned model cannot be saved with save_pretrained (its config cannot hold per-layer "
            "widths): load the safe directory rtdetr-prune wrote for it (weights/pruned_safe).")


def thaw_batchnorms(model: nn.Module) -> nn.Module:
    """Replace transformers' frozen BatchNorms (``RTDetrFrozenBatchNorm2d`` and its v2 twin: statistics and
    affine values as fixed buffers) with ``nn.BatchNorm2d`` layers holding the same values, in place.

    In eval mode they compute the same function (``eps`` 1e-5 both); the difference is that the new layers
    are trainable and Torch-Pruning knows them. The config is updated to say the backbone's norms are not frozen.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__.endswith("FrozenBatchNorm2d"):
                bn = nn.BatchNorm2d(child.weight.numel(), eps=1e-5).to(child.weight.device)
                with torch.no_grad():
                    for attr in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, attr).copy_(getattr(child, attr))
                setattr(parent, name, bn)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "freeze_backbone_batch_norms", False):
        config.freeze_backbone_batch_norms = False
    return model
