"""What a pruning run checks before it starts and before it records a stage: each check raises a UserError that
says what is wrong and how to fix it, before anything is written (or, for a saved copy, removes what it
wrote). :mod:`rtdetr_prune.pipeline` calls them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from rtdetr_prune.errors import UserError, first_line
from rtdetr_prune.models import family_of, load_model
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis import check_model
from rtdetr_prune.recipe import Recipe


def require(recipe: Recipe) -> None:
    """The options every run needs."""
    for key in ("model", "data"):
        if not getattr(recipe, key):
            raise UserError(f"--{key} is required (or set '{key}:' in the --config recipe).")


def require_reachable(model, plan, recipe: Recipe) -> None:
    reachable = check_model(model, recipe.imgsz, recipe.round_to, recipe.max_layer_ratio, plan,
                            recipe.decoder_parts, recipe.decoder_layers)["max_speed_up"]
    if recipe.speed_up > reachable:
        raise UserError(f"--speed-up {recipe.speed_up:g} is out of reach: this model can reach at most {reachable:.2f}x "
                        f"(round_to={recipe.round_to}, max_layer_ratio={recipe.max_layer_ratio}). Ask for less, "
                        "or raise --max-layer-ratio.")


def require_sparse_model(model, recipe: Recipe) -> None:
    """``--sparse-model`` must be this model sparse-trained: same classes, same layers with the same shapes."""
    sparse = load_model(recipe.sparse_model)
    rules.apply_rewrites(sparse)  # as the model was
    family, given = family_of(model), f"--sparse-model '{recipe.sparse_model}'"
    fix = "Give a checkpoint sparse-trained from --model, or leave --sparse-model out to sparse-train here."
    nc, nc_sparse = family.num_classes(model), family_of(sparse).num_classes(sparse)
    if nc_sparse != nc:
        raise UserError(f"{given} predicts {nc_sparse} classes, --model {nc}. {fix}")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in sparse.state_dict().items()}
    for key in [*ours, *theirs]:
        if ours.get(key) != theirs.get(key):
            there, here = ("is missing" if k is None else f"has shape {list(k)}" for k in (theirs.get(key), ours.get(key)))
            raise UserError(f"{given} is not the architecture of --model '{recipe.model}': '{key}' {there} there "
                            f"but {here} in --model. {fix}")


def require_reloads(model, path: Path, imgsz: int) -> None:
    """The saved copy at ``path`` must load back (through its family) and compute what ``model`` computes;
    if not, it is removed and the run stops with why (else it would fail only when a user loads it)."""
    why = None
    try:
        loaded = load_model(path)
    except UserError as e:
        why = f"does not load back ({e})"
    if why is None:
        x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        try:
            change = output_change(model, loaded, x.to(next(model.parameters()).device))
        except Exception as e:  # noqa: BLE001 - a rebuilt model that cannot even run is the finding
            why = f"does not run ({first_line(e)})"
        else:
            why = f"computes other outputs (by up to {change:.1e} of their size)" if change > 1e-5 else None
    if why:
        shutil.rmtree(path, ignore_errors=True)
        raise UserError(f"The pruned model's safe copy '{path}' {why}, so it was removed. The safe format rebuilds "
                        "layers from their tensors' shapes and standard layers' size attributes; a module of your own "
                        "that caches a width elsewhere is not rebuilt. weights/pruned.pt holds the pruned model (load "
                        "it with the same --plugin files).")


def output_change(a, b, x: torch.Tensor) -> float:
    """Largest difference between the eval outputs of two models on ``x``, relative to the outputs' size."""
    with torch.no_grad():
        ya, yb = tensors(a.eval()(x)), tensors(b.to(x.device).eval()(x))
    if [t.shape for t in ya] != [t.shape for t in yb]:
        return float("inf")
    return max((float((p - q).abs().max() / p.abs().max().clamp_min(1e-12)) for p, q in zip(ya, yb)), default=0.0)


def tensors(out) -> list[torch.Tensor]:
    """Every tensor in a model's output (nested tuples, lists and dicts), in order."""
    if isinstance(out, torch.Tensor):
        return [out.float()]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def require_distillable(model) -> None:
    """``--distill`` needs a family whose trainers take a teacher."""
    family = family_of(model)
    if not family.distills:
        raise UserError(f"--distill is not available for {family.name} models yet: run without --distill.")

