"""Every option of a pruning run, in one place: its default and why, its help line, and its check.

The :class:`Recipe` is the only owner of option defaults and validation. The engine's
:class:`~rtdetr_prune.pruning.engine.PruneOptions`, sparse training's
:class:`~rtdetr_prune.train.sparsity.SparseOptions`, every command-line flag and its ``--help`` line
derive from it (:func:`default`, :func:`validate`, :func:`help_line`).

A recipe is built from defaults, then a YAML file over them, then command-line flags (or Python
keyword arguments) over that. Unknown keys are rejected with the nearest valid key, and values are
never silently coerced: ``epochs: 2.7`` or ``latency: null`` is an error, not 2 or False. The merged
recipe is saved into every run directory as ``recipe.yaml``, so any run can be repeated with
``--config runs/prune/exp/recipe.yaml``.

Example:
    >>> recipe = load_recipe("recipe.yaml", {"speed_up": 2.0})
    >>> recipe.validate().speed_up
    2.0
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import yaml

from rtdetr_prune.errors import UserError, first_line, suggest

Check = Callable[[object], "str | None"]  # value -> what is wrong with it (None: fine)
REG_SCHEDULES = ("constant", "linear", "step")
SCHEDULES = ("oneshot", "iterative")
SPARSE_PICKS = ("best", "last", "prunable")
DECODER_PARTS = ("memory", "value", "ffn", "mlp")  # the decoder widths --decoder-parts can turn on (docs/benchmarks.md)
AUTO = "auto"  # --decoder-parts: every part the model's family can prune (memory left out when distilling features)
TARGETS = ("gflops", "latency")
BACKENDS = ("torch", "onnxruntime")


def _option(default, help: str, check: Check | None = None, choices: tuple[str, ...] | Callable = (),
            shown: str | None = None):
    """A recipe field: ``help`` is the --help line (meaning, unit, when to change it); ``check`` returns
    what is wrong with a value; ``choices`` (or a function returning them) are the valid strings;
    ``shown`` is how --help shows the default ("" for none: a required option)."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices, "shown": shown})


def _at_least(lo: float, hint: str = "") -> Check:
    return lambda v: None if v >= lo else f"must be at least {lo:g} (got {v}){hint}"


def _between(lo: float, hi: float, closed: bool = False, hint: str = "") -> Check:
    def check(v):
        ok = lo <= v <= hi if closed else lo < v < hi
        return None if ok else f"must be between {lo:g} and {hi:g}{' inclusive' if closed else ''} (got {v}){hint}"
    return check


def _from_to(lo: int, hi: int, hint: str = "") -> Check:
    """Whole numbers ``lo`` to ``hi``. The upper bounds catch typos (``epochs: 1e9``) before a run starts that
    would never end or could never allocate; they sit far above any real use."""
    return lambda v: None if lo <= v <= hi else f"must be from {lo} to {hi} (got {v}){hint}"


MAX_IMGSZ = 4096  # AIFI attends over the whole 1/32 map: 16384 tokens at 4096 px, ~9 GB of fp32 attention per image


def _imgsz(v) -> str | None:
    if not (v > 0 and v % 32 == 0):
        return f"must be a positive multiple of 32 (got {v}); RT-DETR downsamples by 32"
    return None if v <= MAX_IMGSZ else f"must be at most {MAX_IMGSZ} (got {v}); tile larger images"


def _speed_up(v) -> str | None:
    return None if v > 1.0 else f"must be greater than 1 (got {v}); e.g. 1.5 for 1.5x fewer GFLOPs"


def _not_empty(v) -> str | None:
    return None if v.strip() else "must not be empty"


def decoder_parts(v: str) -> tuple[str, ...]:
    """The parts a --decoder-parts value names ("memory,ffn" -> ("memory", "ffn"); "none" or "" -> ()). "auto"
    names no fixed parts: resolve it for a model first
    (:func:`~rtdetr_prune.pruning.analysis.parts.resolve_parts`)."""
    names = [p.strip() for p in v.split(",") if p.strip()]
    if AUTO in names:
        raise ValueError(f"--decoder-parts {v}: '{AUTO}' depends on the model; resolve it with resolve_parts first")
    return () if names == ["none"] else tuple(dict.fromkeys(names))


def _decoder_parts(v) -> str | None:
    if v.strip() == AUTO:
        return None
    names = [p.strip() for p in v.split(",") if p.strip()]
    bad = [p for p in names if p not in DECODER_PARTS and names != ["none"]]
    if bad:
        return (f"names an unknown part '{bad[0]}'.{suggest(bad[0], DECODER_PARTS)} Give a comma-separated list of "
                f"{', '.join(DECODER_PARTS)}, or none, or {AUTO}")
    return None


def _methods() -> tuple[str, ...]:
    from rtdetr_prune.pruning.methods import METHODS  # late: methods import Torch-Pruning

    return tuple(METHODS)


@dataclass
class Recipe:
    """Every option of ``rtdetr-prune prune``. Each default says why."""

    model: str = _option("", "the trained model: zoo name, RT-DETR .yaml, .pt checkpoint or saved model "
                         "directory (required)", shown="")
    data: str = _option("", "YOLO-format data YAML: its val split gives mAP, its train split finetunes and feeds "
                        "gradient criteria (required)", shown="")
    method: str = _option("lamp", "pruning criterion; lamp needs no sparse training and no gradients and was "
                          "strongest in the seed's tables", choices=_methods)
    speed_up: float = _option(1.5, "target: baseline GFLOPs / pruned GFLOPs; 1.5 lost 1-2 mAP points before "
                              "finetuning in the seed's tables, 2 and more need longer finetuning", _speed_up)
    max_steps: int = _option(50, "safety stop on pruning steps; at --step-ratio 0.1, 2x takes 5-8 steps",
                             _at_least(1))
    step_ratio: float = _option(0.1, "share of each group's channels removed per step (0-1); smaller steps let "
                                "data-driven criteria re-score in between, at more steps", _between(0, 1))
    global_pruning: bool = _option(False, "rank channels across all layer groups instead of taking the same share "
                                   "of each; per-group is safer for detection heads")
    round_to: int = _option(16, "channel counts stay multiples of this: CPU conv kernels block channels by 16 "
                            "(docs/benchmarks.md), GPUs and NPUs by 8 or 16; use 8 for narrow models",
                            _at_least(1, "; e.g. 16, or 8 for narrow models"))
    max_layer_ratio: float = _option(0.8, "largest share (0-1) of one group's channels pruning may remove; keeps "
                                     "every path alive. Raise it to reach deeper cuts", _between(0, 1))
    decoder_parts: str = _option(AUTO, "decoder widths to prune besides the backbone and encoder, comma-separated: "
                                 "memory (the decoder's input width), value (deformable attention's value width, "
                                 "equal per head), ffn (feed-forward hidden width), mlp (box and position heads' "
                                 "hidden widths); none keeps the decoder whole; auto: every part the model's family "
                                 "prunes (Ultralytics: all four, less memory with --distill; transformers: none). "
                                 "memory and value run over every anchor (8,400 at 640 px) and hold most of the "
                                 "decoder's GFLOPs; ffn and mlp run over the queries. With --sensitivity the profile "
                                 "decides how much each loses; on the accuracy benchmark all four kept 95.9% of the "
                                 "control's mAP50-95 at 2x against 94.2% for none (every seed; 98.2% against 98.7% "
                                 "at 1.5x), and they let deep latency targets go further (docs/benchmarks.md, 2c, 3f)",
                                 _decoder_parts)
    decoder_layers: int = _option(0, "keep only the first K decoder layers (as RT-DETR's eval_idx does at inference) "
                                  "before pruning channels; 0 keeps all", _from_to(0, 100))
    target: str = _option("gflops", "what --speed-up counts: gflops (base / pruned GFLOPs, planned exactly) or "
                          "latency (base / pruned time, measured side by side with --backend at --latency-batch "
                          "and --imgsz on --device)", choices=TARGETS)
    backend: str = _option("torch", "runtime the latency target and --latency-aware time models in: torch (eager) or "
                           "onnxruntime", choices=BACKENDS)
    latency_batch: int = _option(8, "images per timed forward pass for --target latency and --latency-aware (8, "
                                 "as in the seed's tables)", _from_to(1, 1024))
    latency_aware: bool = _option(False, "rank channels by importance lost per millisecond saved (a per-layer cost "
                                  "table timed on this device and backend) instead of per GFLOP")
    tolerance: float = _option(0.03, "how far past the target the last step may land, as a share of the target "
                               "(0.03: up to 3% past; at most 1, twice the target)", _between(0, 1, closed=True))
    grad_batches: int = _option(8, "data batches per pruning step for group_taylor and group_hessian; more is "
                                "steadier and slower", _at_least(1))
    sensitivity: int = _option(64, "training images to measure each layer group's sensitivity on (the detection "
                               "loss with only that group pruned a third, two thirds and fully, after BatchNorm "
                               "recalibration); every group's width is then chosen by loss added per GFLOP saved. "
                               "At 2x on the accuracy benchmark it kept 94% of the control's mAP50-95 against 87% for "
                               "equal shares (docs/benchmarks.md, 3e). Costs 3 x (BatchNorm + loss pass) over these "
                               "images per group, once per run (rtdetr-r18: 58 groups, 174 trials; the 160 px proxy's "
                               "34 groups took 2 minutes on 2 CPU cores). 0: every group loses the same share (or "
                               "--global-pruning's ranking)", _from_to(0, 1_000_000))
    sensitivity_steps: int = _option(1, "with --sensitivity: reach the target in this many profiled steps, step k "
                                     "pruning to speed-up target^(k/K) with widths from a profile measured on the "
                                     "model as step k finds it (removing channels together costs more than the sum "
                                     "of removing each alone; re-measuring on the partly pruned model sees it). "
                                     "Costs K profiles, each on a smaller model. 2 kept 3.3 points less than 1 at 2x "
                                     "on the accuracy benchmark (docs/benchmarks.md, 3f)", _from_to(1, 20))
    bn_images: int = _option(256, "training images (evenly spaced over the split) to re-estimate BatchNorm "
                             "statistics on right after pruning, before finetuning: removed channels shift every "
                             "later layer's activations, and stale statistics cost most of the pruned model's mAP "
                             "(docs/benchmarks.md, 3e); 0 keeps the unpruned model's statistics",
                             _from_to(0, 1_000_000))
    epochs: int = _option(50, "finetune epochs after pruning (0 skips finetuning); RT-DETR needs tens of epochs "
                          "to recover", _from_to(0, 10_000))
    schedule: str = _option("oneshot", "oneshot: prune to the target, then finetune --epochs; iterative: --rounds "
                            "times prune a step (speed-up target^(i/rounds)) and finetune a share of --epochs "
                            "(same total). oneshot costs one pruning pass; benchmarks/accuracy.py compares "
                            "the two", choices=SCHEDULES)
    rounds: int = _option(3, "iterative schedule only: prune-and-finetune rounds (each finetunes about "
                          "--epochs / rounds epochs)", _from_to(2, 100))
    sparse_epochs: int = _option(30, "sparse-training epochs before pruning, for slim, group_slim, group_sl and "
                                 "group_reg (other methods ignore it; 0 prunes the model as given, without sparse "
                                 "training)", _from_to(0, 10_000))
    reg: float = _option(5e-4, "sparsity penalty strength at the first sparse epoch (the seed's default); usual "
                         "range 1e-5 to 1e-2", _between(0, 1, closed=True))
    delta_reg: float = _option(1e-4, "group_reg only: growth of the penalty of the weakest channels per epoch",
                               _between(0, 1, closed=True))
    reg_schedule: str = _option("constant", "how --reg changes over the sparse epochs: constant, linear (down to "
                                "0) or step (halved at 50% and 75%)", choices=REG_SCHEDULES)
    sparse_model: str = _option("", "a sparse-trained checkpoint of this model to prune instead of sparse "
                                "training again (sparse methods only)", shown="none: sparse-train")
    sparse_pick: str = _option("best", "which sparse-training epoch to prune: best (highest mAP50-95), last, or "
                               "prunable (highest mAP50-95 once pruned to the target, measured on a val subset "
                               "after every epoch; costs a pruning pass per epoch)", choices=SPARSE_PICKS)
    distill: bool = _option(False, "distill from the unpruned model while finetuning (and sparse training): its "
                            "decoder-input features and its selected queries' class and box outputs (see docs)")
    distill_feat: float = _option(1.0, "weight of the feature term (squared error of the decoder's projected "
                                  "inputs over the teacher's mean square: scale-free)", _between(0, 1000, closed=True))
    distill_cls: float = _option(1.0, "weight of the class term (KL divergence at the teacher's selected queries)",
                                 _between(0, 1000, closed=True))
    distill_box: float = _option(5.0, "weight of the box term (L1 at the teacher's selected queries; 5:1 to the "
                                 "class term, as in RT-DETR's own loss)", _between(0, 1000, closed=True))
    imgsz: int = _option(640, "image side for training, validation and GFLOPs, pixels (multiple of 32)", _imgsz)
    batch: int = _option(8, "images per batch for training, validation and gradient criteria; lower it if "
                         "memory runs out", _from_to(1, 1024))
    device: str = _option("", '"" picks the first GPU, else the CPU; "cpu", "0", or "0,1" for multi-GPU (DDP)',
                          shown='"": auto')
    workers: int = _option(2, "data-loading worker processes (0: load in the main process)", _at_least(0))
    project: str = _option("runs/prune", "runs go to PROJECT/NAME; an existing run is never overwritten "
                           "(NAME2, NAME3... instead)", _not_empty)
    name: str = _option("exp", "run name under --project", _not_empty)
    seed: int = _option(0, "random seed: same seed, data and options give the same pruned channels",
                        _from_to(0, 2**31 - 1, "; NumPy's generator, which Ultralytics seeds, takes 32 bits"))
    latency: bool = _option(True, "time batch-8 latency of every stage side by side at the end (seconds on CPU)")
    val: bool = _option(True, "measure mAP of every stage on the data's val split (turn off to save time)")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def updated(self, values: dict, source: str = "options") -> "Recipe":
        """A copy with ``values`` applied; unknown keys and values of the wrong type raise with a hint."""
        known = {f.name: f for f in fields(self)}
        clean = {}
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in known:
                raise UserError(f"Unknown option '{key}' in {source}.{suggest(k, known)} Valid options: {', '.join(known)}.")
            clean[k] = coerce(k, value, type(default(k)), source)
        return dataclasses.replace(self, **clean)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Recipe":
        """Raise a UserError naming the first impossible value and how to fix it; return self."""
        validate(self)
        check_device(self.device)
        if self.target == "latency" and self.schedule != "oneshot":
            raise UserError("--target latency works with --schedule oneshot (each round of an iterative schedule "
                            "would need its own timing); use --schedule oneshot, or --target gflops.")
        if (self.distill and self.distill_feat > 0 and self.decoder_parts.strip() != AUTO
                and "memory" in decoder_parts(self.decoder_parts)):
            raise UserError("--distill compares the decoder's input features, whose width --decoder-parts memory "
                            "prunes: drop memory from --decoder-parts, or set --distill-feat 0 (output terms only).")
        ranking = [flag for flag, on in (("--global-pruning", self.global_pruning),
                                         ("--latency-aware", self.latency_aware)) if on]
        if self.sensitivity and ranking:
            raise UserError(f"{ranking[0]} ranks channels across groups, and --sensitivity (on by default) chooses "
                            f"every group's width from measured loss instead: add --sensitivity 0 to use "
                            f"{ranking[0]}, or drop {ranking[0]}.")
        return self


FIELDS = {f.name: f for f in fields(Recipe)}


def default(name: str):
    """The default of recipe option ``name`` (what every other option object uses)."""
    return FIELDS[name].default


def help_line(name: str) -> str:
    """The --help line of option ``name``: meaning, unit, when to change it, and its default."""
    f = FIELDS[name]
    choices = _choices(f)
    listed = f" One of: {', '.join(choices)}." if choices else ""
    shown = f.metadata.get("shown")
    shown = repr(f.default) if shown is None else shown
    return f"{f.metadata['help']}.{listed}" + (f" (default: {shown})" if shown else "")


def validate(options, names: list[str] | None = None) -> None:
    """Check the attributes of ``options`` that are recipe options (or only ``names``) with the recipe's checks.

    Raises:
        UserError: ``--option-name`` and what is wrong with its value.
    """
    for name in names or [n for n in FIELDS if hasattr(options, n)]:
        problem = check_value(name, getattr(options, name))
        if problem:
            raise UserError(f"--{name.replace('_', '-')} {problem}.")


def check_value(name: str, value) -> str | None:
    """What is wrong with ``value`` for option ``name``, or None."""
    f = FIELDS[name]
    choices = _choices(f)
    if choices and value not in choices:
        return f"must be one of {', '.join(choices)} (got '{value}').{suggest(value, choices)}".rstrip(".")
    check = f.metadata.get("check")
    return check(value) if check else None


def _choices(f) -> tuple[str, ...]:
    c = f.metadata.get("choices") or ()
    return tuple(c() if callable(c) else c)


def coerce(key: str, value, kind: type, source: str = "options"):
    """``value`` as the option's type, refusing anything that would change its meaning.

    Accepted: bool for bool options; int (not bool) for int options; int or finite float for float
    options; str or a path for str options. Refused: null, 2.7 for an int, "yes" for a bool, inf.
    """
    ok = False
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, (str, os.PathLike))
        value = os.fspath(value) if ok else value
    if not ok:
        shown = "null" if value is None else repr(value)
        raise UserError(f"Option '{key}' in {source} must be {_KIND_WORDS[kind]}, got {shown}.")
    return value


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}


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
            raise UserError(f"Recipe '{path}' is not valid YAML: {first_line(e, with_type=False)}") from e
        if not isinstance(values, dict):
            raise UserError(f"Recipe '{path}' must be a mapping of option: value.")
        recipe = recipe.updated(values, source=str(path))
    return recipe.updated(overrides or {}, source="command-line flags")


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    from rtdetr_prune.io.files import write_text

    write_text(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
