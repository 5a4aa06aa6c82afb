"""The whole job, top to bottom: (sparse-train), prune to the target, (finetune), measure, report.

Only this module writes run artifacts. Each stage's outputs are written atomically as soon as the
stage ends, and ``state.json`` records the finished stages, so an interrupted run keeps everything it
finished and ``rtdetr-prune prune --resume RUN_DIR`` continues from the first unfinished stage (sparse
training and finetuning continue from their last saved epoch; a training run that ended but was not yet
recorded is taken as it is).

Run directory layout::

    recipe.yaml            merged options
    state.json             finished stages and their measurements
    sparse/                sparse training run (sparse methods only): weights/best.pt, last.pt (and prunable.pt
                           with --sparse-pick prunable), sparsity.csv (per epoch: sparsity, mAP50-95, pruned
                           mAP50-95) and sparsity.png
    rounds/<i>/            iterative schedule: round i's pruned model, history.csv, widths.csv and finetune run
                           (every round but the last; the last round uses the paths below)
    weights/pruned.pt      pruned model (Ultralytics checkpoint; loads with ultralytics.RTDETR)
    weights/pruned_safe/   the same model as safetensors + JSON spec (no pickle)
    history.csv            step, params, gflops, speed_up
    widths.csv             each layer group's width before pruning started and after (widths.png draws it)
    finetune/              finetuning run: weights/best.pt, last.pt, results.csv
    report.json            the numbers; report.md (the table), curve.png and widths.png for people
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from rtdetr_prune import guards
from rtdetr_prune import report as report_md
from rtdetr_prune.data.yolo import data_batches, load_data, require_same_classes
from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import new_run_dir, write_csv, write_json
from rtdetr_prune.measure.stage import stage_metrics, torch_device
from rtdetr_prune.models import adapter_of, family_of, load_model
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis import analyse
from rtdetr_prune.pruning.analysis.parts import resolve_parts
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.latency_aware import LayerCosts
from rtdetr_prune.pruning.latency_target import prune_to_latency
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.pruning.recalibrate import recalibrate_batchnorm
from rtdetr_prune.pruning.schedule import round_epochs, round_targets, step_target
from rtdetr_prune.pruning.sensitivity import Sensitivity, loss_damage
from rtdetr_prune.recipe import Recipe, load_recipe, save_recipe
from rtdetr_prune.train.distill import DistillOptions
from rtdetr_prune.train.sparsity import SparseOptions

LOG = logging.getLogger("rtdetr_prune")


def prune(recipe: Recipe, resume: str | Path | None = None) -> dict:
    """Run the job described by ``recipe`` (or continue the run in ``resume``); return the report."""
    run_dir, recipe = _resume(resume) if resume else (None, recipe)
    torch.manual_seed(recipe.seed)  # first: a zoo name builds a randomly initialized model
    method = get_method(recipe.validate().method)
    guards.require(recipe)
    data = load_data(recipe.data)
    model = load_model(recipe.model, nc=len(data["names"]))
    require_same_classes(model, data, recipe.data)
    # --decoder-parts auto -> the parts this model's family prunes (recipe.yaml records them)
    recipe = dataclasses.replace(recipe, decoder_parts=resolve_parts(model, recipe.decoder_parts,
                                                                     recipe.distill and recipe.distill_feat > 0))
    options = PruneOptions.from_recipe(recipe)  # the engine's options, once the decoder parts are known
    rules.apply_rewrites(model)
    plan = analyse(model, recipe.round_to)
    if method.needs_sparse_training and recipe.sparse_model:
        guards.require_sparse_model(model, recipe)
    if recipe.distill:
        guards.require_distillable(model)
    if run_dir is None:
        guards.require_reachable(model, plan, recipe)
        run_dir = new_run_dir(recipe.project, recipe.name)
        save_recipe(recipe, run_dir / "recipe.yaml")
    state = _load_state(run_dir)
    LOG.info("run directory: %s", run_dir)

    if "baseline" not in state:
        state["baseline"] = _measure(model, recipe, run_dir, "baseline")
        _save_state(run_dir, state)
    if method.needs_sparse_training and "sparse" not in state:
        probe = {"method": method.name, "plan": plan,  # what "prunable" scores each epoch by: the first pruning
                 "options": dataclasses.replace(options, speed_up=round_targets(recipe.speed_up, _rounds_of(recipe))[0],
                                            latency_aware=False)}  # per epoch: GFLOPs ranking, no timing
        state["sparse"] = _sparse_stage(model, method.name, recipe, run_dir, probe)
        _save_state(run_dir, state)
    start = state.get("sparse", {}).get("checkpoint")  # none with --sparse-epochs 0
    start, original = _rounds(model, start, plan, method, options, recipe, data, run_dir, state)  # iterative only
    if "pruned" not in state:
        source = load_model(start) if start else model
        step = _step_options(options, recipe, state, recipe.speed_up)
        state["pruned"] = _prune(source, plan, method, step, recipe, data, run_dir, original=original,
                                 base_gflops=state["baseline"]["gflops"])
        _save_state(run_dir, state)
    _write_report(run_dir, method.name, recipe, state)  # a report of what is done, before the long finetune
    epochs = round_epochs(recipe.epochs, _rounds_of(recipe))[-1]
    if epochs > 0 and "finetuned" not in state:
        best = _finetune(model, run_dir, recipe, epochs=epochs)
        state["finetuned"] = {**_measure(load_model(best), recipe, run_dir, "finetuned"), "checkpoint": str(best)}
        _save_state(run_dir, state)
    if recipe.latency and "latency" not in state:
        state["latency"] = _latencies(model, run_dir, recipe, state)
        _save_state(run_dir, state)
    report = _write_report(run_dir, method.name, recipe, state)
    return {**report, "run_dir": str(run_dir)}


def _rounds(model, start: str | None, plan, method, options, recipe: Recipe, data: dict, run_dir: Path,
            state: dict) -> tuple[str | None, dict | None]:
    """The iterative schedule's rounds but the last (each prunes a step and finetunes its share of the epochs, in
    ``rounds/<i>/``, recorded in ``state["rounds"]`` as it finishes). Returns the checkpoint the last round prunes
    (``start`` for one-shot) and the widths pruning started from (None for one-shot: the model's own)."""
    if recipe.schedule == "oneshot":
        return start, None
    targets, epochs = round_targets(recipe.speed_up, recipe.rounds), round_epochs(recipe.epochs, recipe.rounds)
    rounds = state.setdefault("rounds", [])
    for i in range(1, recipe.rounds):
        where = run_dir / "rounds" / str(i)
        if len(rounds) < i:  # prune this round's step
            source = load_model(start) if start else model
            original = rounds[0]["pruned"]["original_widths"] if rounds else None
            step = _step_options(options, recipe, state, targets[i - 1])
            stage = _prune(source, plan, method, step, recipe, data, run_dir, where=where, stage=f"round{i}-pruned",
                           original=original, base_gflops=state["baseline"]["gflops"])
            rounds.append({"round": i, "target": targets[i - 1], "epochs": epochs[i - 1], "pruned": stage})
            _save_state(run_dir, state)
        record = rounds[i - 1]
        if "finetuned" not in record:
            checkpoint = where / "weights" / "pruned.pt"
            if epochs[i - 1] > 0:
                checkpoint = _finetune(model, run_dir, recipe, where=where, epochs=epochs[i - 1])
                record["finetuned"] = _measure(load_model(checkpoint), recipe, run_dir, f"round{i}-finetuned")
            record.setdefault("finetuned", {})["checkpoint"] = str(checkpoint)
            _save_state(run_dir, state)
        start = record["finetuned"]["checkpoint"]
    return start, rounds[0]["pruned"]["original_widths"] if rounds else None


def _rounds_of(recipe: Recipe) -> int:
    return recipe.rounds if recipe.schedule == "iterative" else 1


def _step_options(options: PruneOptions, recipe: Recipe, state: dict, target: float) -> PruneOptions:
    """The engine's options for pruning toward overall ``target`` from where the last round left the model."""
    rounds = state.get("rounds") or []
    if not rounds:
        return dataclasses.replace(options, speed_up=target)
    return dataclasses.replace(options, speed_up=step_target(target, rounds[-1]["pruned"]["speed_up"]))


def _sparse_stage(model, method: str, recipe: Recipe, run_dir: Path, probe: dict) -> dict:
    """The sparse stage's record: the checkpoint to prune and which epoch it is (``--sparse-pick``), or
    (``--sparse-epochs 0``) a note that there is none."""
    if recipe.sparse_epochs == 0 and not recipe.sparse_model:
        note = (f"--sparse-epochs 0: {method} pruned the given model without sparse training, so its channel "
                "scores are the trained model's own, not sparsified ones.")
        LOG.warning(note)
        return {"note": note}
    if recipe.sparse_model:  # checked at the start (guards.require_sparse_model)
        return {"checkpoint": recipe.sparse_model}
    family = family_of(model)
    if recipe.sparse_pick in family.sparse_picks:
        return {"checkpoint": str(_sparse(model, method, recipe, run_dir, recipe.sparse_pick, probe)),
                "pick": recipe.sparse_pick}
    note = (f"--sparse-pick {recipe.sparse_pick}: {family.name} models keep their sparse training's "
            f"{family.sparse_picks[0]} epoch ({', '.join(family.sparse_picks)} only).")
    LOG.warning(note)
    return {"checkpoint": str(_sparse(model, method, recipe, run_dir, family.sparse_picks[0], probe)),
            "pick": family.sparse_picks[0], "note": note}


def _sparse(model, method: str, recipe: Recipe, run_dir: Path, pick: str, probe: dict) -> Path:
    """Sparse-train (continuing an interrupted run); return the epoch ``pick`` names. ``probe``: the method,
    options and plan that score each epoch's prunability (used with pick "prunable")."""
    family = family_of(model)
    status = family.run_status(run_dir, "sparse", recipe.sparse_epochs)
    if status != "finished":  # "finished": killed after training, before the stage was recorded
        start = _baseline_checkpoint(model, recipe, run_dir)
        sparse = dataclasses.asdict(SparseOptions.from_recipe(recipe))
        del sparse["method"]
        picking = {} if pick == "best" else {"pick": pick, **({"probe": probe} if pick == "prunable" else {})}
        family.sparse_train(start, recipe.data, method, recipe.sparse_epochs, run_dir, "sparse",
                            status == "unfinished", sparse, distill=_distill(model, recipe, run_dir), **picking,
                            **_train_settings(recipe))
    return family.sparse_checkpoint(run_dir / "sparse", pick)


def _baseline_checkpoint(model, recipe: Recipe, run_dir: Path) -> Path:
    """weights/baseline.pt: the model the run started from, as its family's trainers read it (written once)."""
    path = run_dir / "weights" / "baseline.pt"
    if not path.is_file():
        family_of(model).save_checkpoint(model, path, train_args=_train_args(recipe))
    return path


def _distill(model, recipe: Recipe, run_dir: Path) -> tuple[Path, DistillOptions] | None:
    """(teacher checkpoint, loss weights) when the recipe distils: the teacher is the baseline."""
    if not recipe.distill:
        return None
    return _baseline_checkpoint(model, recipe, run_dir), DistillOptions.from_recipe(recipe)


def _prune(model, plan, method, options, recipe: Recipe, data: dict, run_dir: Path, where: Path | None = None,
           stage: str = "pruned", original: dict | None = None, base_gflops: float | None = None) -> dict:
    """Prune to the target; write history.csv, widths.csv, weights/pruned.pt (and the safe copy) into ``where``
    (default: the run directory); return the stage. ``original``: the widths pruning started from, when ``model``
    is a round's already pruned model; ``base_gflops``: the run's baseline GFLOPs (its speed-up is counted from them)."""
    where = where or run_dir
    batches = data_batches(data, recipe.imgsz, recipe.batch, workers=0) if method.needs_gradients else None
    rows: list[dict] = []

    def on_step(row: dict) -> None:  # keep history.csv current: a crash keeps the steps done so far
        rows.append(row)
        write_csv(where / "history.csv", rows)

    latency, costs = None, None
    sensitivity = _sensitivity(recipe, data, where / "sensitivity.json")
    if recipe.latency_aware:  # the per-layer time table, measured once on the run's device and runtime
        costs = LayerCosts.measure(model, recipe.latency_batch, recipe.imgsz, recipe.backend,
                                   torch_device(recipe.device))
    if recipe.target == "latency":  # measured: the GFLOPs engine, aimed by timing against the model (one-shot only)
        latency = prune_to_latency(model, method, options, _meter(model, recipe), batches, plan, costs=costs,
                                   sensitivity=sensitivity)
        result = latency.result
        for row in result.history:
            on_step(row)
        LOG.info(latency.message)
    else:
        result = prune_to_target(model, method, options, batches, plan, on_step=on_step, original_widths=original,
                                 costs=costs, sensitivity=sensitivity)
    LOG.info(result.message)
    calibrated = _recalibrate(result.model, recipe, data)
    order = {name: i for i, (name, _) in enumerate(result.model.named_modules())}  # network order
    write_csv(where / "widths.csv", [{"group": k, "original": w, "pruned": result.widths.get(k, w)}
                                     for k, w in sorted(result.original_widths.items(), key=lambda kw: order.get(kw[0], 0))])
    meta = {"method": method.name, "speed_up": result.speed_up, "widths": result.widths}
    family = family_of(result.model)
    family.save_checkpoint(result.model, where / "weights" / "pruned.pt", train_args=_train_args(recipe), meta=meta)
    guards.require_reloads(result.model, family.save_safe(result.model, where / "weights" / "pruned_safe", meta=meta),
                     recipe.imgsz)
    measured = _measure(result.model, recipe, run_dir, stage)
    speed_up = base_gflops / measured["gflops"] if base_gflops else result.speed_up
    stage = {**measured, "speed_up": round(speed_up, 4), "steps": result.steps, "message": result.message,
             "skipped": [{"layer": s.layer, "reason": s.reason} for s in result.skipped],
             "original_widths": result.original_widths, "bn_images": calibrated}
    if latency is not None:  # measured and GFLOPs speed-ups side by side (report.json; report.md's notes)
        stage.update(speed_up_measured=round(latency.measured, 4), latency_evaluations=latency.evaluations,
                     note=latency.message)
    return stage


def _sensitivity(recipe: Recipe, data: dict, record: Path) -> Sensitivity | None:
    """--sensitivity N: a profile measured with the detection loss on N evenly spaced training images, its curves
    kept in ``record`` (a run stopped midway resumes the profile where it stopped)."""
    if recipe.sensitivity == 0:
        return None
    batches = list(data_batches(data, recipe.imgsz, recipe.batch, workers=0, spread=recipe.sensitivity)())
    return Sensitivity(loss_damage(batches, torch_device(recipe.device)), record)


def _recalibrate(model, recipe: Recipe, data: dict) -> int:
    """Re-estimate the pruned model's BatchNorm statistics on ``--bn-images`` training images (the adapter's traced
    region holds every BatchNorm the engine's cuts can shift); return how many images were used."""
    if recipe.bn_images == 0:
        return 0
    batches = data_batches(data, recipe.imgsz, recipe.batch, workers=0, spread=recipe.bn_images)
    images = recalibrate_batchnorm(model, adapter_of(model).region(), batches, recipe.bn_images,
                                   torch_device(recipe.device))
    if images:
        LOG.info("BatchNorm statistics re-estimated on %d training images", images)
    return images


def _meter(model, recipe: Recipe):
    """What --target latency times with: the run's model as the reference, at the recipe's batch, size, backend
    and device."""
    from rtdetr_prune.bench.meter import LatencyMeter

    return LatencyMeter(model, batch=recipe.latency_batch, imgsz=recipe.imgsz, backend=recipe.backend,
                        device=torch_device(recipe.device))


def _finetune(model, run_dir: Path, recipe: Recipe, epochs: int, where: Path | None = None) -> Path:
    """Finetune ``where``/weights/pruned.pt (default: the run directory's) at its own widths for ``epochs``, into
    ``where``/finetune (continuing an interrupted finetune); return the checkpoint to keep. ``model`` is the
    baseline (it names the family; the teacher when distilling)."""
    where, family = where or run_dir, family_of(model)
    status = family.run_status(where, "finetune", epochs)
    if status == "finished":  # killed after training, before the stage was recorded
        return family.kept_checkpoint(where / "finetune")
    return family.finetune(where / "weights" / "pruned.pt", recipe.data, epochs, where, "finetune",
                           status == "unfinished", distill=_distill(model, recipe, run_dir), **_train_settings(recipe))


def _latencies(baseline, run_dir: Path, recipe: Recipe, state: dict) -> dict:
    """Batch-8 latency (ms/img) of every finished stage, timed side by side (interleaved) in one run, so
    the ratios between stages hold even when the machine's speed drifts."""
    from rtdetr_prune.bench import bench

    # the safe copy: checked to reload identical, and loadable whatever the family's checkpoint format
    models = {"baseline": baseline, "pruned": load_model(run_dir / "weights" / "pruned_safe")}
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
        "target": recipe.target,
        "speed_up_measured": pruned.get("speed_up_measured"),  # --target latency: base time / pruned time
        "steps": pruned.get("steps"),
        "message": pruned.get("message"),
        "skipped": pruned.get("skipped", []),
        "baseline": stage("baseline"),
        "pruned": stage("pruned"),
        "finetuned": stage("finetuned"),
        "notes": [s["note"] for s in state.values() if isinstance(s, dict) and "note" in s],  # e.g. no sparse training
        "schedule": recipe.schedule,
        "rounds": _round_rows(recipe, state),
    }
    write_json(run_dir / "report.json", report)
    if "pruned" in state:
        report_md.write_report_md(run_dir)
    return report


_STAGE_KEYS = ("params", "gflops", "size_mb", "map50", "map50_95", "latency_ms")


def _round_rows(recipe: Recipe, state: dict) -> list[dict]:
    """One row per finished round of an iterative schedule (the last round is the run's pruned and finetuned
    stages): its target, epochs, speed-up and mAP50-95 before and after its finetune. Empty for one-shot."""
    if recipe.schedule == "oneshot":
        return []
    last = {"round": recipe.rounds, "target": recipe.speed_up, "epochs": round_epochs(recipe.epochs, recipe.rounds)[-1],
            "pruned": state.get("pruned"), "finetuned": state.get("finetuned")}
    rows = []
    for r in [*state.get("rounds", []), last]:
        if r["pruned"] is None:
            break
        rows.append({"round": r["round"], "target": r["target"], "epochs": r["epochs"],
                     "speed_up": r["pruned"]["speed_up"], "pruned_map50_95": r["pruned"].get("map50_95"),
                     "finetuned_map50_95": (r.get("finetuned") or {}).get("map50_95")})
    return rows


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
