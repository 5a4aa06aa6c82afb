"""One recipe for a pruning run: defaults here, a YAML file over them, command-line flags over that.

Unknown keys are rejected with the nearest valid key; the merged recipe is saved into every run
directory as ``recipe.yaml``, so any run can be repeated with ``--config runs/prune/exp/recipe.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from rtdetr_prune.errors import UserError, suggest


@dataclass
class Recipe:
    """Every option of ``rtdetr-prune prune``. Each default says why."""

    model: str = ""  # zoo name, RT-DETR .yaml, trained .pt, or safe pruned-model directory (required)
    data: str = ""  # YOLO-format data YAML: importance batches, mAP, finetuning (required)
    method: str = "lamp"  # LAMP: strong in the seed's tables, needs no sparse training and no gradients
    speed_up: float = 1.5  # base GFLOPs / pruned GFLOPs; 1.5x lost ~1-2 mAP points before finetuning in the seed
    max_steps: int = 50  # safety stop; at step_ratio 0.1, 2x takes about 5-8 steps
    step_ratio: float = 0.1  # share of channels removed per step: small enough to re-score between steps
    global_pruning: bool = False  # rank channels across layers (per-layer share otherwise: safer for detection heads)
    round_to: int = 16  # channel counts stay multiples of 16: what CPU conv kernels block by (8 for GPUs is enough)
    max_layer_ratio: float = 0.8  # no layer group loses more than 80% of its channels
    grad_batches: int = 8  # data batches per step for group_taylor / group_hessian
    epochs: int = 50  # finetune epochs after pruning (0 skips): RT-DETR needs tens of epochs to recover
    sparse_epochs: int = 30  # sparse-training epochs for slim, group_slim, group_sl, group_reg
    reg: float = 5e-4  # sparsity regularization strength (the seed's default)
    delta_reg: float = 1e-4  # group_reg: growth of the penalty per update
    reg_schedule: str = "constant"  # constant | linear | step: how reg changes over the sparse epochs
    sparse_model: str = ""  # reuse an existing sparse checkpoint instead of sparse training
    imgsz: int = 640  # training, validation and GFLOPs image size, pixels (multiple of 32)
    batch: int = 8  # images per batch for training, validation and importance
    device: str = ""  # "" = first GPU if any, else CPU; "cpu", "0", "0,1" (DDP)
    workers: int = 2  # data-loading worker processes
    project: str = "runs/prune"  # runs go to project/name, never overwriting an earlier run
    name: str = "exp"
    seed: int = 0  # same seed, same data and options: same pruned channels
    latency: bool = True  # measure batch-8 latency of each stage (a few seconds per stage on CPU)
    val: bool = True  # measure mAP of each stage on the data's val split

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def updated(self, values: dict, source: str = "options") -> "Recipe":
        """A copy with ``values`` applied; unknown keys and wrong types raise with a hint."""
        known = {f.name: f for f in fields(self)}
        clean = {}
        for key, value in values.items():
            k = key.replace("-", "_")
            if k not in known:
                raise UserError(f"Unknown option '{key}' in {source}.{suggest(k, known)} Valid options: {', '.join(known)}.")
            clean[k] = _coerce(k, value, type(getattr(self, k)), source)
        return dataclasses.replace(self, **clean)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Recipe":
        """Raise a UserError naming the first impossible value and how to fix it; return self.

        The pruning options (speed-up, imgsz, step and layer ratios) are checked by ``PruneOptions``.
        """
        checks = [
            (0 <= self.reg <= 1, f"--reg must be between 0 and 1 (got {self.reg}); the usual range is 1e-5 to 1e-2"),
            (0 <= self.delta_reg <= 1, f"--delta-reg must be between 0 and 1 (got {self.delta_reg})"),
            (self.reg_schedule in REG_SCHEDULES,
             f"--reg-schedule must be one of {', '.join(REG_SCHEDULES)} (got '{self.reg_schedule}')"
             f"{suggest(self.reg_schedule, REG_SCHEDULES)}"),
            (self.epochs >= 0 and self.sparse_epochs >= 0, "--epochs and --sparse-epochs must be 0 or more"),
            (self.batch >= 1 and self.workers >= 0, "--batch must be at least 1 and --workers 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message + ".")
        check_device(self.device)
        return self


REG_SCHEDULES = ("constant", "linear", "step")


def check_device(device: str) -> None:
    """Accept "", "cpu", "mps", or CUDA indices ("0", "0,1") that exist on this machine."""
    import torch

    d = str(device).strip().lower()
    if d in {"", "cpu", "mps"}:
        return
    ids = [x.strip() for x in d.replace("cuda:", "").split(",")]
    if not all(x.isdigit() for x in ids):
        raise UserError(f"--device '{device}' is not understood. Use cpu, 0, or 0,1 for GPUs 0 and 1.")
    count = torch.cuda.device_count()
    missing = [x for x in ids if int(x) >= count]
    if missing:
        have = f"GPUs 0-{count - 1}" if count else "no CUDA GPU"
        raise UserError(f"--device {device}: this machine has {have}. Use --device cpu, or a GPU index that exists.")


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Defaults, then the YAML at ``path`` (if any), then ``overrides`` (e.g. command-line flags)."""
    recipe = Recipe()
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"Recipe '{path}' not found. Give an existing YAML file (a run's recipe.yaml works).")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"Recipe '{path}' is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(values, dict):
            raise UserError(f"Recipe '{path}' must be a mapping of option: value.")
        recipe = recipe.updated(values, source=str(path))
    return recipe.updated(overrides or {}, source="command-line flags")


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    from rtdetr_prune.files import write_text

    write_text(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def _coerce(key: str, value, kind: type, source: str):
    if value is None:
        return kind()
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"true", "1", "yes"}:
            return True
        if str(value).lower() in {"false", "0", "no"}:
            return False
    else:
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise UserError(f"Option '{key}' in {source} must be {kind.__name__}, got {value!r}.")
