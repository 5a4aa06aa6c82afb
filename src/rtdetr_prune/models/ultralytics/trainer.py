"""Training with Ultralytics' engine without losing the pruned widths: finetune, sparse-train, baseline.

Ultralytics' trainer, handed a ``.pt``, rebuilds the network from the YAML stored in it and copies
over only the weights whose shapes match, so a pruned model silently grows back to full width.
:class:`PrunedTrainer` trains the loaded module itself instead. The path stays a path until the
trainer sets the model up, so the same override serves fresh runs, ``resume`` and the DDP workers
(which Ultralytics starts in new processes that load the model from the file again).

Example:
    >>> trainer = finetune("runs/prune/exp/weights/pruned.pt", "data.yaml", epochs=50, imgsz=640, batch=16,
    ...                    device="0", workers=8, project="runs/prune/exp", name="finetune", seed=0)
    >>> trainer.best  # weights/best.pt: the pruned architecture, finetuned
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn
from ultralytics.models.rtdetr.train import RTDETRTrainer
from ultralytics.utils import DEFAULT_CFG, RANK
from ultralytics.utils.torch_utils import unwrap_model

from rtdetr_prune.errors import UserError
from rtdetr_prune.models.ultralytics.distiller import Distiller, registered
from rtdetr_prune.models.ultralytics.zoo import ZOO
from rtdetr_prune.pruning import rules
from rtdetr_prune.threads import keep_threads


class PrunedTrainer(RTDETRTrainer):
    """Ultralytics' RT-DETR trainer that trains the model it loads as it is, at its own widths.

    Args:
        cfg: Ultralytics' default configuration (as for any trainer).
        overrides: Ultralytics training arguments (``model``, ``data``, ``epochs``...).
        _callbacks: Ultralytics callbacks, by event.
        validate_first: validate the model before the first epoch and keep the metrics in
            :attr:`start_metrics`. Stored as an ``on_train_start`` callback, so it reaches DDP workers.
        distill: distil from a teacher while training (:class:`~rtdetr_prune.models.ultralytics.distiller.Distiller`);
            registered as callbacks after ``validate_first``'s, so the first validation sees the plain model.

    Attributes:
        start_metrics: Ultralytics' metric keys (``metrics/mAP50(B)``...) measured before training,
            or None when not asked for.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None,
                 validate_first: bool = False, distill: Distiller | None = None):
        rules.load_env_plugins()  # in a DDP worker: the user's modules and rules, before the model is loaded
        with keep_threads():  # Ultralytics' CPU device selection would leave one thread (threads.py)
            super().__init__(cfg, overrides, _callbacks)
        self.start_metrics: dict | None = None
        if validate_first and record_start_metrics not in self.callbacks["on_train_start"]:
            self.add_callback("on_train_start", record_start_metrics)
        self.distiller = registered(self.callbacks) or distill  # a DDP worker finds it among its callbacks
        if distill is not None and registered(self.callbacks) is None:
            for event, callback in distill.callbacks().items():
                self.add_callback(event, callback)

    def train(self):
        """Ultralytics' training; its final stand-alone validation may not change the thread count."""
        with keep_threads():
            return super().train()

    def save_model(self):
        """Ultralytics' checkpoints, written atomically: each goes to a hidden temporary file first, then is renamed
        over ``last.pt``/``best.pt``, so a crash mid-write leaves the previous checkpoint whole (and resumable)."""
        final = (self.last, self.best)
        self.last, self.best = (p.with_name(f".{p.name}.tmp") for p in final)
        try:
            saved = super().save_model()
            for tmp, path in zip((self.last, self.best), final):
                if tmp.is_file():
                    os.replace(tmp, path)
        finally:
            self.last, self.best = final
        return saved

    def get_model(self, cfg: str | dict | None = None, weights: nn.Module | None = None, verbose: bool = True):
        """The loaded model itself (float32) when there is one, else a new model built from ``cfg``.

        Args:
            cfg: model YAML path or dict, or a zoo name; used only when ``weights`` is None.
            weights: the model Ultralytics loaded from the ``.pt`` (a checkpoint's EMA or model).
            verbose: print the layer table of a model built from ``cfg``.

        Raises:
            UserError: the model predicts another number of classes than the data has, or the
                weights of a ``.pt`` were dropped (``pretrained=False``), which would rebuild the
                unpruned architecture.
        """
        if weights is None:
            if str(self.args.model).lower().endswith(".pt"):
                raise UserError(f"pretrained=False would drop the weights of '{self.args.model}' and rebuild its "
                                "original (unpruned) architecture from YAML. Leave 'pretrained' at its default.")
            return super().get_model(cfg=ZOO.get(cfg, cfg) if isinstance(cfg, str) else cfg, verbose=verbose)
        model = self.set_model_names_for_load(weights.float())
        _require_classes(model, self.data["nc"], self.args.model)
        model.criterion = None  # a saved criterion would keep stale settings; the loss builds a fresh one
        for p in model.parameters():
            p.requires_grad_(True)  # stripped checkpoints are saved frozen; `freeze` is applied after this
        return model


def record_start_metrics(trainer: PrunedTrainer) -> None:
    """``on_train_start`` callback: validate the model as training receives it, into ``trainer.start_metrics``.

    Uses a fresh validator on the trainer's val loader (the trainer's own validator expects loss
    items from a training batch), on a copy of the model, so training is not affected.
    """
    if RANK not in {-1, 0}:
        return
    validator = trainer.get_validator()
    validator.args.plots = False
    stats = validator(model=copy.deepcopy(unwrap_model(trainer.model)))  # the validator fuses what it gets
    trainer.start_metrics = {k: float(v) for k, v in stats.items() if k != "fitness"}


def _require_classes(model: nn.Module, nc: int, label) -> None:
    model_nc = int(model.model[-1].nc)
    if model_nc != nc:
        raise UserError(f"'{label}' predicts {model_nc} classes but the data has {nc}. Finetune on the data the "
                        "model was trained on (a pruned model's head cannot be rebuilt for new classes).")


def train_args(model, data, epochs: int, imgsz: int, batch: int, device: str, workers: int, project, name: str,
               seed: int, **overrides) -> dict:
    """Ultralytics training arguments for our runs: nothing downloaded, runs under ``project`` as given.

    Defaults that differ from Ultralytics', and why:
        ``amp=False``: Ultralytics' fp16 AMP check downloads yolo26n.pt on CUDA (pass ``amp="bf16"``
        to get mixed precision without the check, or ``amp=True`` to accept the download).
        ``plots=False``: Ultralytics' plots fetch a font.
        ``project`` made absolute: Ultralytics puts relative projects under its own runs directory.
    """
    args = dict(model=str(model), data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device or None,
                workers=workers, project=str(Path(project).resolve()), name=name, seed=seed, amp=False, plots=False)
    return {**args, **overrides}


def finetune(model_pt, data, epochs: int, imgsz: int, batch: int, device: str, workers: int, project, name: str,
             seed: int, resume: bool = False, validate_first: bool = False, distill: Distiller | None = None,
             **overrides) -> PrunedTrainer:
    """Finetune a (pruned) checkpoint at its own widths.

    Args:
        model_pt: Ultralytics-format ``.pt`` (e.g. from :func:`rtdetr_prune.models.ultralytics.checkpoint.save_checkpoint`).
        data: data YAML.
        epochs, imgsz, batch, device, workers, seed: as in Ultralytics (``device`` "" picks one).
        project, name: the run goes to ``project/name`` (``name2``... if taken, unless resuming).
        resume: continue the interrupted run in ``project/name`` from its ``weights/last.pt``, at the
            epoch after the last one saved (optimizer, EMA and best fitness restored).
        validate_first: measure the model before training, into ``trainer.start_metrics``.
        distill: distil from a teacher while finetuning (see :mod:`rtdetr_prune.models.ultralytics.distiller`).
        **overrides: more Ultralytics training arguments (``lr0``, ``amp``...).

    Returns:
        The trainer: ``trainer.best`` / ``trainer.last`` are the checkpoints, ``trainer.save_dir`` the run.
    """
    args = train_args(model_pt, data, epochs, imgsz, batch, device, workers, project, name, seed, **overrides)
    if resume:
        args["resume"] = str(resumable(Path(args["project"]) / name / "weights" / "last.pt", epochs))
    trainer = PrunedTrainer(overrides=args, validate_first=validate_first, distill=distill)
    trainer.train()
    return trainer


def run_status(last: Path, epochs: int) -> str:
    """Where an Ultralytics run stands, from its ``weights/last.pt``: "new" (no file), "unfinished"
    (resumable) or "finished" (Ultralytics marks a finished run's last.pt with epoch -1)."""
    from ultralytics.utils.patches import torch_load

    if not last.is_file():
        return "new"
    epoch = torch_load(last, map_location="cpu").get("epoch", -1)
    return "finished" if epoch < 0 or epoch + 1 >= epochs else "unfinished"


def resumable(last: Path, epochs: int) -> Path:
    """``last`` if it holds an unfinished run, else a UserError that says what to do."""
    status = run_status(last, epochs)
    if status == "new":
        raise UserError(f"Nothing to resume: '{last}' does not exist. Check the project and name of the run.")
    if status == "finished":
        raise UserError(f"The run in '{last.parent.parent}' is finished; start a new run instead of resuming it.")
    return last


def train_baseline(model_name_or_yaml, data, epochs: int, imgsz: int, batch: int, device: str, workers: int,
                   project, name: str, seed: int, **overrides) -> PrunedTrainer:
    """Train a zoo model (or an RT-DETR YAML) from scratch: random initial weights, nothing downloaded.

    Returns:
        The trainer (``trainer.best`` is the trained checkpoint).
    """
    name_or_yaml = str(model_name_or_yaml)
    model = ZOO.get(name_or_yaml, name_or_yaml)  # a YAML path: Ultralytics would turn some names into .pt downloads
    args = train_args(model, data, epochs, imgsz, batch, device, workers, project, name, seed, pretrained=False,
                      **overrides)
    trainer = PrunedTrainer(overrides=args)
    trainer.train()
    return trainer


__all__ = ["PrunedTrainer", "finetune", "record_start_metrics", "run_status", "train_args",
           "train_baseline"]
