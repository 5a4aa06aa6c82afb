"""The whole job, top to bottom: (sparse-train), prune to the target, (finetune), measure, report.

Only this module writes run artifacts. Each stage's outputs are written atomically as soon as the
stage ends, and ``state.json`` records the finished stages, so an interrupted run keeps everything it
finished and ``rtdetr-prune prune --resume RUN_DIR`` continues from the first unfinished stage (sparse
training and finetuning continue from their last saved epoch; a training run that ended but was not yet
recorded is taken as it is).

Run directory layout::

    recipe.yaml            merged options
    state.json             finished stages and their measurements
    sparse/                sparse training run (sparse methods only): weights/best.pt, sparsity.csv/.png
    weights/pruned.pt      pruned model (Ultralytics checkpoint; loads with ultralytics.RTDETR)
    weights/pruned_safe/   the same model as safetensors + JSON spec (no pickle)
    history.csv            step, params, gflops, speed_up
    finetune/              finetuning run: weights/best.pt, last.pt, results.csv
    report.json            the numbers; report.md (the table) and curve.png for people
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from rtdetr_prune import report as report_md
from rtdetr_prune.data.yolo import data_batches, load_data, require_same_classes
from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import new_run_dir, write_csv, write_json
from rtdetr_prune.measure.stage import stage_metrics, torch_device
from rtdetr_prune.models import family_of, load_model
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis import analyse, check_model
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.recipe import Recipe, load_recipe, save_recipe
from rtdetr_prune.train.sparsity import SparseOptions

LOG = logging.getLogger("rtdetr_prune")


def prune(recipe: Recipe, resume: str | Path | None = None) -> dict:
    """Run the job described by ``recipe`` (or continue the run in ``resume``); return the report."""
    run_dir, recipe = _resume(resume) if resume else (None, recipe)
    torch.manual_seed(recipe.seed)  # first: a zoo name builds a randomly initialized model
    method, options = get_method(recipe.method), PruneOptions.from_recipe(recipe.validate())
    _require(recipe)
    data = load_data(recipe.data)
    model = load_model(recipe.model, nc=len(data["names"]))
    require_same_classes(model, data, recipe.data)
    rules.apply_rewrites(model)
    plan = analyse(model, recipe.round_to)
    if run_dir is None:
        _require_reachable(model, plan, recipe)
        run_dir = new_run_dir(recipe.project, recipe.name)
        save_recipe(recipe, run_dir / "recipe.yaml")
    state = _load_state(run_dir)
    LOG.info("run directory: %s", run_dir)

    if "baseline" not in state:
        state["baseline"] = _measure(model, recipe, run_dir, "baseline")
        _save_state(run_dir, state)
    if method.needs_sparse_training and "sparse" not in state:
        state["sparse"] = {"checkpoint": str(_sparse(model, method.name, recipe, run_dir))}
        _save_state(run_dir, state)
    if "pruned" not in state:
        source = load_model(state["sparse"]["checkpoint"]) if "sparse" in state else model
        state["pruned"] = _prune(source, plan, method, options, recipe, data, run_dir)
        _save_state(run_dir, state)
    _write_report(run_dir, method.name, recipe, state)  # a report of what is done, before the long finetune
    if recipe.epochs > 0 and "finetuned" not in state:
        best = _finetune(model, run_dir, recipe)
        state["finetuned"] = {**_measure(load_model(best), recipe, run_dir, "finetuned"), "checkpoint": str(best)}
        _save_state(run_dir, state)
    if recipe.latency and "latency" not in state:
        state["latency"] = _latencies(model, run_dir, recipe, state)
        _save_state(run_dir, state)
    report = _write_report(run_dir, method.name, recipe, state)
    return {**report, "run_dir": str(run_dir)}


def _sparse(model, method: str, recipe: Recipe, run_dir: Path) -> Path:
    """Sparse-train (or take ``--sparse-model``); return the sparse checkpoint to prune."""
    if recipe.sparse_model:
        load_model(recipe.sparse_model)  # fail early and clearly if it is not usable
        return Path(recipe.sparse_model)
    family = family_of(model)
    status = family.run_status(run_dir, "sparse", recipe.sparse_epochs)
    if status == "finished":  # killed after training, before the stage was recorded
        return family.kept_checkpoint(run_dir / "sparse")
    start = run_dir / "weights" / "baseline.pt"
    if status == "new":
        family.save_checkpoint(model, start, train_args=_train_args(recipe))
    sparse = dataclasses.asdict(SparseOptions.from_recipe(recipe))
    del sparse["method"]
    return family.sparse_train(start, recipe.data, method, recipe.sparse_epochs, run_dir, "sparse",
                               status == "unfinished", sparse, **_train_settings(recipe))


def _prune(model, plan, method, options, recipe: Recipe, data: dict, run_dir: Path) -> dict:
    """Prune to the target; write history.csv, weights/pruned.pt (and the safe copy); return the stage."""
    batches = data_batches(data, recipe.imgsz, recipe.batch, workers=0) if method.needs_gradients else None
    rows: list[dict] = []

    def on_step(row: dict) -> None:  # keep history.csv current: a crash keeps the steps done so far
        rows.append(row)
        write_csv(run_dir / "history.csv", rows)

    result = prune_to_target(model, method, options, batches, plan, on_step=on_step)
    LOG.info(result.message)
    meta = {"method": method.name, "speed_up": result.speed_up, "widths": result.widths}
    family = family_of(result.model)
    family.save_safe(result.model, run_dir / "weights" / "pruned_safe", meta=meta)
    family.save_checkpoint(result.model, run_dir / "weights" / "pruned.pt", train_args=_train_args(recipe), meta=meta)
    return {**_measure(result.model, recipe, run_dir, "pruned"), "speed_up": round(result.speed_up, 4),
            "steps": result.steps, "message": result.message,
            "skipped": [{"layer": s.layer, "reason": s.reason} for s in result.skipped]}


def _finetune(model, run_dir: Path, recipe: Recipe) -> Path:
    """Finetune weights/pruned.pt at its own widths (continuing an interrupted finetune); return the
    checkpoint to keep. ``model`` is the baseline (it names the family)."""
    family = family_of(model)
    status = family.run_status(run_dir, "finetune", recipe.epochs)
    if status == "finished":  # killed after training, before the stage was recorded
        return family.kept_checkpoint(run_dir / "finetune")
    return family.finetune(run_dir / "weights" / "pruned.pt", recipe.data, recipe.epochs, run_dir, "finetune",
                           status == "unfinished", **_train_settings(recipe))


def _latencies(baseline, run_dir: Path, recipe: Recipe, state: dict) -> dict:
    """Batch-8 latency (ms/img) of every finished stage, timed side by side (interleaved) in one run, so
    the ratios between stages hold even when the machine's speed drifts."""
    from rtdetr_prune.bench import bench

    models = {"baseline": baseline, "pruned": load_model(run_dir / "weights" / "pruned.pt")}
    if "finetuned" in state:
        models["finetuned"] = load_model(state["finetuned"]["checkpoint"])
    result = bench(models, batch=8, imgsz=recipe.imgsz, device=torch_device(recipe.device))
    return {row["model"]: round(row["latency_ms"], 3) for row in result["rows"]}


def _write_report(run_dir: Path, method: str, recipe: Recipe, state: dict) -> dict:
    latency = state.get("latency", {})
    stage = lambda k: {**{key: v for key, v in state[k].items() if key in _STAGE_KEYS},  # noqa: E731
                       "latency_ms": latency.get(k)} if k in state else None
    pruned = state.get("pruned", {})
    report = {
        "method": method,
        "speed_up_target": recipe.speed_up,
        "speed_up_achieved": pruned.get("speed_up"),
        "steps": pruned.get("steps"),
        "message": pruned.get("message"),
        "skipped": pruned.get("skipped", []),
        "baseline": stage("baseline"),
        "pruned": stage("pruned"),
        "finetuned": stage("finetuned"),
    }
    write_json(run_dir / "report.json", report)
    if "pruned" in state:
        report_md.write_report_md(run_dir)
    return report


_STAGE_KEYS = ("params", "gflops", "size_mb", "map50", "map50_95", "latency_ms")


def _require(recipe: Recipe) -> None:
    for key in ("model", "data"):
        if not getattr(recipe, key):
            raise UserError(f"--{key} is required (or set '{key}:' in the --config recipe).")


def _require_reachable(model, plan, recipe: Recipe) -> None:
    reachable = check_model(model, recipe.imgsz, recipe.round_to, recipe.max_layer_ratio, plan)["max_speed_up"]
    if recipe.speed_up > reachable:
        raise UserError(f"--speed-up {recipe.speed_up:g} is out of reach: this model can reach at most {reachable:.2f}x "
                        f"(round_to={recipe.round_to}, max_layer_ratio={recipe.max_layer_ratio}). Ask for less, "
                        "or raise --max-layer-ratio.")


def _train_args(recipe: Recipe) -> dict:
    """What a saved checkpoint records about the data it is for."""
    return {"data": recipe.data, "imgsz": recipe.imgsz}


def _train_settings(recipe: Recipe) -> dict:
    """The recipe's settings for every training run (sparse training and finetuning)."""
    return {"imgsz": recipe.imgsz, "batch": recipe.batch, "device": recipe.device, "workers": recipe.workers,
            "seed": recipe.seed}


def _measure(model, recipe: Recipe, run_dir: Path, stage: str) -> dict:
    return stage_metrics(model, recipe.imgsz, recipe.data if recipe.val else None, recipe.batch, recipe.device,
                         recipe.workers, save_dir=run_dir / "val" / stage)


def _resume(run_dir: str | Path) -> tuple[Path, Recipe]:
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run directory (no recipe.yaml). Give the directory of the run to resume.")
    return run_dir, load_recipe(run_dir / "recipe.yaml")


def _load_state(run_dir: Path) -> dict:
    path = run_dir / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(run_dir: Path, state: dict) -> None:
    write_json(run_dir / "state.json", state)
