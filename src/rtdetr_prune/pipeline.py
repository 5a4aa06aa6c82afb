"""The whole job, top to bottom: (sparse-train), prune to the target, (finetune), measure, report.

Only this module writes run artifacts. Each stage's outputs are written atomically as soon as the
stage ends, so an interrupted run keeps everything it finished.

Run directory layout::

    recipe.yaml            merged options
    weights/pruned.pt      pruned model (Ultralytics checkpoint; loads with ultralytics.RTDETR)
    history.csv            step, params, gflops, speed_up
    report.json            the numbers (schema in README); report.md and curve.png for people
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rtdetr_prune import report as report_md
from rtdetr_prune.checkpoint import save_checkpoint
from rtdetr_prune.datasets import data_batches, load_data, require_same_classes
from rtdetr_prune.engine import PruneOptions, prune_to_target
from rtdetr_prune.errors import UserError
from rtdetr_prune.evaluate import stage_metrics
from rtdetr_prune.files import new_run_dir, write_csv, write_json
from rtdetr_prune.methods import get_method
from rtdetr_prune.probe import analyse
from rtdetr_prune.recipe import Recipe, save_recipe
from rtdetr_prune.zoo import load_model

LOG = logging.getLogger("rtdetr_prune")


def prune(recipe: Recipe) -> dict:
    """Run a pruning job described by ``recipe``; return the report (also written to the run directory)."""
    method, options = get_method(recipe.method), _options(recipe)
    _require(recipe)
    data = load_data(recipe.data)
    model = load_model(recipe.model, nc=len(data["names"]))
    require_same_classes(model, data, recipe.data)
    if method.needs_sparse_training:
        raise UserError(f"Method '{method.name}' needs sparse training first, which this version cannot run yet; "
                        "choose a method without it (l1, random, group_norm, lamp, group_hessian, group_taylor).")
    if recipe.epochs > 0:
        raise UserError("Finetuning is not available in this version yet: pass --epochs 0.")
    run_dir = new_run_dir(recipe.project, recipe.name)
    save_recipe(recipe, run_dir / "recipe.yaml")
    torch.manual_seed(recipe.seed)
    LOG.info("run directory: %s", run_dir)

    plan = analyse(model, recipe.round_to)
    baseline = _measure(model, recipe, run_dir, "baseline")
    batches = data_batches(data, recipe.imgsz, recipe.batch, workers=0) if method.needs_gradients else None
    rows: list[dict] = []

    def on_step(row: dict) -> None:  # keep history.csv current: a crash keeps the steps done so far
        rows.append(row)
        write_csv(run_dir / "history.csv", rows)

    result = prune_to_target(model, method, options, batches, plan, on_step=on_step)
    save_checkpoint(result.model, run_dir / "weights" / "pruned.pt",
                    train_args={"data": recipe.data, "imgsz": recipe.imgsz},
                    meta={"method": method.name, "speed_up": result.speed_up, "widths": result.widths})
    LOG.info(result.message)
    report = {
        "method": method.name,
        "speed_up_target": recipe.speed_up,
        "speed_up_achieved": round(result.speed_up, 4),
        "steps": result.steps,
        "message": result.message,
        "skipped": [{"layer": s.layer, "reason": s.reason} for s in result.skipped],
        "baseline": baseline,
        "pruned": _measure(result.model, recipe, run_dir, "pruned"),
        "finetuned": None,
    }
    write_json(run_dir / "report.json", report)
    report_md.write_report_md(run_dir)
    report["run_dir"] = str(run_dir)
    return report


def _options(recipe: Recipe) -> PruneOptions:
    return PruneOptions(speed_up=recipe.speed_up, max_steps=recipe.max_steps, step_ratio=recipe.step_ratio,
                        global_pruning=recipe.global_pruning, round_to=recipe.round_to,
                        max_layer_ratio=recipe.max_layer_ratio, imgsz=recipe.imgsz, grad_batches=recipe.grad_batches)


def _require(recipe: Recipe) -> None:
    for key in ("model", "data"):
        if not getattr(recipe, key):
            raise UserError(f"--{key} is required (or set '{key}:' in the --config recipe).")


def _measure(model, recipe: Recipe, run_dir: Path, stage: str) -> dict:
    return stage_metrics(model, recipe.imgsz, recipe.data if recipe.val else None, recipe.batch, recipe.device,
                         recipe.workers, recipe.latency, save_dir=run_dir / "val" / stage)
