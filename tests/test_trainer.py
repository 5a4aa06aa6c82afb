"""Training keeps pruned widths (fresh runs, resume, DDP workers); sparse training penalizes, keeps the best epoch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ, fake_batch
from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.measure.stage import val_map
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint
from rtdetr_prune.models.ultralytics.sparse_trainer import SparseTrainer, Sparsifier, sparse_train
from rtdetr_prune.models.ultralytics.trainer import PrunedTrainer, finetune, train_args, train_baseline
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.threads import torch_threads
from rtdetr_prune.train.sparsity import SparseOptions, reg_at

# Learns the synthetic shapes within a few epochs: one optimizer step per batch (nbs = batch), no warmup,
# no mosaic. Ultralytics' defaults (nbs=64, 3 warmup epochs) make 3 steps in 10 epochs of 18 images.
FAST = dict(nbs=8, warmup_epochs=0, mosaic=0.0, optimizer="AdamW", lr0=0.002)
BATCH = 8


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_args(model, data, epochs, project, name, **overrides) -> dict:
    return train_args(model, data, epochs, IMGSZ, BATCH, "cpu", 0, project, name, 0, **overrides)


@dataclass
class Pruned:
    path: Path
    widths: list[int]
    full_widths: list[int]


@pytest.fixture(scope="module")
def trained(data_yaml, tmp_path_factory) -> PrunedTrainer:
    """rtdetr-tiny trained from scratch for 10 epochs (about 12 s): a model with a nonzero mAP."""
    return train_baseline("rtdetr-tiny", data_yaml, 10, IMGSZ, BATCH, "cpu", 0, tmp_path_factory.mktemp("runs"),
                          "baseline", 0, **FAST)


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory) -> Pruned:
    # Ultralytics saves finished checkpoints with requires_grad=False; Torch-Pruning traces through autograd.
    model = load_model(trained.best).requires_grad_(True)
    result = prune_to_target(model, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ))
    assert result.speed_up >= 1.5, result.message
    path = save_checkpoint(result.model, tmp_path_factory.mktemp("pruned") / "pruned.pt")
    return Pruned(path, widths(result.model), widths(model))


def test_train_baseline_trains_the_zoo_model_from_scratch(trained):
    assert widths(load_model(trained.best)) == widths(load_model("rtdetr-tiny", nc=3))
    assert [int(r["epoch"]) for r in read_csv(trained.csv)] == list(range(1, 11))
    assert not trained.args.pretrained and not trained.args.amp and not trained.args.plots  # nothing downloaded


def test_finetune_starts_from_the_pruned_weights(pruned, data_yaml, tmp_path):
    assert pruned.widths != pruned.full_widths
    trainer = finetune(pruned.path, data_yaml, 1, IMGSZ, BATCH, "cpu", 0, tmp_path, "ft", 0, validate_first=True)
    assert widths(load_model(trainer.best)) == pruned.widths
    m50, m5095 = val_map(load_model(pruned.path), data_yaml, IMGSZ, BATCH, "cpu", 0, tmp_path / "val")
    assert trainer.start_metrics["metrics/mAP50(B)"] == pytest.approx(m50, abs=1e-9)
    assert trainer.start_metrics["metrics/mAP50-95(B)"] == pytest.approx(m5095, abs=1e-9)


def test_finetune_refuses_other_classes_and_dropped_weights(pruned, data_yaml, tmp_path):
    other = save_checkpoint(load_model("rtdetr-tiny", nc=5), tmp_path / "nc5.pt")
    with pytest.raises(UserError, match="predicts 5 classes"):
        PrunedTrainer(overrides=run_args(other, data_yaml, 1, tmp_path, "nc")).train()
    with pytest.raises(UserError, match="pretrained=False"):
        PrunedTrainer(overrides=run_args(pruned.path, data_yaml, 1, tmp_path, "np", pretrained=False)).train()


def _interrupt_after_first_epoch(trainer):
    if trainer.epoch == 0:  # on_fit_epoch_end: epoch 1 is validated and saved to last.pt
        raise KeyboardInterrupt


def test_resume_continues_after_the_last_saved_epoch(pruned, data_yaml, tmp_path):
    first = PrunedTrainer(overrides=run_args(pruned.path, data_yaml, 3, tmp_path, "run"))
    first.add_callback("on_fit_epoch_end", _interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert [int(r["epoch"]) for r in read_csv(first.csv)] == [1]

    resumed = finetune(pruned.path, data_yaml, 3, IMGSZ, BATCH, "cpu", 0, tmp_path, "run", 0, resume=True)
    assert resumed.save_dir == first.save_dir and resumed.start_epoch == 1
    assert [int(r["epoch"]) for r in read_csv(resumed.csv)] == [1, 2, 3]
    assert widths(load_model(resumed.best)) == pruned.widths
    with pytest.raises(UserError, match="finished"):
        finetune(pruned.path, data_yaml, 3, IMGSZ, BATCH, "cpu", 0, tmp_path, "run", 0, resume=True)


def test_ddp_worker_rebuilds_the_pruned_model_from_file(pruned, data_yaml, tmp_path):
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    trainer = PrunedTrainer(overrides=run_args(pruned.path, data_yaml, 1, tmp_path, "ddp"), validate_first=True)
    assert trainer.model == str(pruned.path)  # what the launcher hands the workers: a path, not a module
    file = generate_ddp_file(trainer)
    try:  # on CPU the worker trains as a single process
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        subprocess.run([sys.executable, file], check=True, timeout=600, env=env, capture_output=True)
    finally:
        ddp_cleanup(trainer, file)
    assert widths(load_model(trainer.last)) == pruned.widths


def test_reg_schedules_exact_values():
    assert [reg_at("constant", 0.1, e, 4) for e in range(4)] == [0.1] * 4
    assert [reg_at("linear", 1.0, e, 5) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert reg_at("linear", 1.0, 0, 1) == 1.0  # a single epoch is both first and last: keep the penalty
    assert [reg_at("step", 1.0, e, 4) for e in range(4)] == [1.0, 1.0, 0.5, 0.25]
    assert [reg_at("step", 1.0, e, 10) for e in range(10)] == [1.0] * 5 + [0.5] * 3 + [0.25] * 2


def test_sparse_options_reject_mistakes():
    with pytest.raises(UserError, match="without sparse training"):
        SparseOptions("lamp")
    with pytest.raises(UserError, match="Did you mean 'linear'"):
        SparseOptions("slim", reg_schedule="lineer")
    with pytest.raises(UserError, match="Did you mean 'slim'"):
        SparseOptions("slimm")


def test_penalty_lands_on_unscaled_gradients_once(tiny):
    """Ultralytics' step order (scale, backward, unscale, step) with a live GradScaler: the penalty is
    added to the unscaled gradient, scaled by the schedule, and never to protected layers."""
    sparsifier = Sparsifier(SparseOptions("slim", reg=0.1))
    optimizer = torch.optim.SGD(tiny.parameters(), lr=1.0)
    sparsifier.attach(tiny, optimizer)
    sparsifier.scale = 0.5
    modules = dict(tiny.named_modules())
    free = modules[sparsifier.bn_names[0]]
    protected = modules["model.0.m.0.cv1.bn"]  # a BatchNorm of a skipped group (8 channels: narrower than a unit)
    assert isinstance(protected, nn.BatchNorm2d) and "model.0.m.0.cv1.bn" not in sparsifier.bn_names

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    tiny.train()
    scaler.scale(tiny.loss(fake_batch())[0].sum()).backward()
    scaler.unscale_(optimizer)
    before = {m: (m.weight.detach().clone(), m.weight.grad.clone()) for m in (free, protected)}
    scaler.step(optimizer)
    w, g = before[free]
    assert torch.equal(free.weight.detach(), w - (g + 0.5 * 0.1 * torch.sign(w)))
    w, g = before[protected]
    assert torch.equal(protected.weight.detach(), w - g)


@pytest.mark.parametrize("schedule, method", [("constant", "slim"), ("linear", "group_slim"), ("step", "group_sl")])
def test_each_schedule_trains_and_logs_sparsity(pruned, data_yaml, tmp_path, schedule, method):
    best = sparse_train(pruned.path, data_yaml, method, 2, 1e-3, 0.0, schedule, IMGSZ, BATCH, "cpu", 0, tmp_path,
                        "sparse", 0)
    rows = read_csv(best.parent.parent / "sparsity.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["reg"]) for r in rows] == pytest.approx([reg_at(schedule, 1e-3, e, 2) for e in range(2)])
    assert all(0.0 <= float(r["sparsity"]) <= 1.0 for r in rows)
    assert (best.parent.parent / "sparsity.png").stat().st_size > 0
    assert widths(load_model(best)) == pruned.widths


def test_growing_reg_raises_the_weakest_channels_penalty_each_epoch(pruned, data_yaml, tmp_path):
    reg, delta = 1e-4, 1e-3
    trainer = SparseTrainer(overrides=run_args(pruned.path, data_yaml, 2, tmp_path, "grow"),
                            sparse=SparseOptions("group_reg", reg=reg, delta_reg=delta))
    trainer.train()
    regs = torch.cat([r.flatten() for r in trainer.sparsifier.pruner.group_reg.values()])
    assert regs.min() == pytest.approx(reg)  # each group's most important channel never grows
    assert reg + delta < regs.max() <= reg + 2 * delta + 1e-9  # its least important grows delta per update


def _silence_last_epoch(trainer):
    """on_train_epoch_end of the last epoch: the EMA (what is validated and saved) detects nothing, so its mAP is 0."""
    if trainer.epoch == trainer.epochs - 1:
        with torch.no_grad():
            for head in trainer.ema.ema.model[-1].dec_score_head:
                head.bias.fill_(-1e4)  # every class score ~0, below the validator's confidence threshold


def test_kept_sparse_checkpoint_is_the_best_map_epoch(data_yaml, tmp_path):
    """Starts from the shipped demo checkpoint (trained on this generator's shapes), so the first epochs detect
    something on every CPU: from the 10-epoch fixture, pruned, every epoch scored 0 on some CPUs (numerics)."""
    from ultralytics.utils.patches import torch_load

    from rtdetr_prune.demo import ASSET

    start = save_checkpoint(load_model(ASSET), tmp_path / "demo.pt")
    trainer = SparseTrainer(overrides=run_args(start, data_yaml, 3, tmp_path, "best", **{**FAST, "lr0": 1e-4}),
                            sparse=SparseOptions("group_sl", reg=1e-3))
    trainer.add_callback("on_train_epoch_end", _silence_last_epoch)
    trainer.train()
    rows = read_csv(trainer.csv)
    maps = [float(r["metrics/mAP50-95(B)"]) for r in rows]
    assert maps[-1] == 0 and max(maps) > 0, maps  # the last epoch is the worst; an earlier one is best
    top = max(i for i, m in enumerate(maps) if m == max(maps))  # ties go to the later epoch
    kept = torch_load(trainer.best, map_location="cpu")["train_metrics"]
    assert kept["fitness"] == pytest.approx(kept["metrics/mAP50-95(B)"])  # Ultralytics 8.4: fitness is mAP50-95
    assert kept["metrics/mAP50-95(B)"] == pytest.approx(maps[top], abs=1e-6)
    assert kept["metrics/mAP50(B)"] == pytest.approx(float(rows[top]["metrics/mAP50(B)"]), abs=1e-6)
    last = torch_load(trainer.last, map_location="cpu")["train_metrics"]
    assert last["metrics/mAP50-95(B)"] == 0  # so best.pt is not simply the last epoch


def test_sparse_options_reach_ddp_workers_through_the_callbacks(pruned, data_yaml, tmp_path):
    """Rebuild the trainer the way Ultralytics' DDP worker script does, from the state file it writes."""
    from ultralytics.utils import DEFAULT_CFG_DICT
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file
    from ultralytics.utils.patches import torch_load

    options = SparseOptions("group_reg", reg=2e-4, delta_reg=3e-5, reg_schedule="step")
    trainer = SparseTrainer(overrides=run_args(pruned.path, data_yaml, 1, tmp_path, "ddp"), sparse=options)
    file = generate_ddp_file(trainer)
    try:
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
    finally:
        ddp_cleanup(trainer, file)
    worker = state["trainer"](cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state["args"],
                              _callbacks=state["callbacks"])
    assert type(worker) is SparseTrainer and worker.sparsifier.options == options
    assert sum(cb.__self__ is worker.sparsifier for cb in worker.callbacks["on_train_start"]
               if hasattr(cb, "__self__")) == 1  # registered once, not again by the worker's constructor


def test_trainer_and_validation_keep_the_thread_count(pruned, data_yaml, tmp_path):
    """Ultralytics' CPU device selection sets min(8, cpus - 1) threads for good; ours keep the caller's."""
    from ultralytics.utils import NUM_THREADS

    wanted = NUM_THREADS + 1
    with torch_threads(wanted):
        PrunedTrainer(overrides=run_args(pruned.path, data_yaml, 1, tmp_path, "threads"))
        assert torch.get_num_threads() == wanted
        val_map(load_model(pruned.path), data_yaml, IMGSZ, BATCH, "cpu", 0, tmp_path / "val")
        assert torch.get_num_threads() == wanted


def test_ddp_worker_loads_the_plugins_the_launcher_loaded(data_yaml, tmp_path):
    """A model with a user's module (from a --plugin file) trains in the DDP worker: the worker loads
    the plugin named in RTDETR_PRUNE_PLUGINS before unpickling the model."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    from rtdetr_prune.pruning import rules

    examples = Path(__file__).parent.parent / "examples"
    with rules.scoped():
        rules.load_plugin(examples / "my_modules.py")
        assert str((examples / "my_modules.py").resolve()) in os.environ[rules.PLUGINS_ENV]
        torch.manual_seed(0)
        path = save_checkpoint(load_model(str(examples / "rtdetr-my-modules.yaml"), nc=3), tmp_path / "mine.pt")
        trainer = PrunedTrainer(overrides=run_args(path, data_yaml, 1, tmp_path, "ddp"))
        file = generate_ddp_file(trainer)
        try:
            env = {**os.environ, "OMP_NUM_THREADS": "2"}  # carries RTDETR_PRUNE_PLUGINS, as DDP's launcher does
            done = subprocess.run([sys.executable, file], timeout=600, env=env, capture_output=True, text=True)
        finally:
            ddp_cleanup(trainer, file)
        assert done.returncode == 0, done.stderr[-2000:]
        assert trainer.last.is_file()
    assert rules.PLUGINS_ENV not in os.environ or "my_modules" not in os.environ[rules.PLUGINS_ENV]  # scoped


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")} if root.is_dir() else set()


def test_a_run_writes_nothing_outside_its_directory(tiny, data_yaml, tmp_path, monkeypatch):
    """A 1-epoch finetune and the run's validations, from a relative run directory as the CLI's default, leave
    nothing outside it: no runs/detect/<project>/<name> tree in the working directory or in Ultralytics' runs
    folder (where it puts relative projects), and no temporary folder once validation is done."""
    import tempfile
    from types import SimpleNamespace

    from ultralytics.cfg import get_save_dir

    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    runs = get_save_dir(SimpleNamespace(project="p", name="n", task="detect", mode="val", exist_ok=True)).parents[2]
    runs_before = _tree(runs)
    model_pt = save_checkpoint(tiny, tmp_path / "model.pt")
    trainer = finetune(model_pt, data_yaml, 1, IMGSZ, BATCH, "cpu", 0, "runs/prune/exp", "finetune", 0, **FAST)
    assert trainer.best.is_file()
    val_map(load_model(trainer.best), data_yaml, IMGSZ, BATCH, "cpu", 0, save_dir="runs/prune/exp/val/finetuned")
    val_map(load_model(trainer.best), data_yaml, IMGSZ, BATCH, "cpu", 0)  # no save_dir: a temporary one
    run = work / "runs" / "prune" / "exp"
    outside = [p for p in work.rglob("*") if p != run and run not in p.parents and p not in run.parents]
    assert not outside, outside
    assert _tree(runs) == runs_before, sorted(_tree(runs) - runs_before)
    assert not list(tmp.glob("rtdetr_prune_val_*")), "the temporary validation folder is removed"
