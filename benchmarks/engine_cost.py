"""Engine cost: how long pruning to a target takes, per method, split by stage, in training steps.

For each method, a fresh ``rtdetr-r18`` (10 classes, random weights, seed 0) is pruned to 2x fewer
GFLOPs with :func:`rtdetr_prune.pruning.engine.prune_to_target` (its default options, GFLOPs at ``--imgsz``),
and its wall time is split by wrapping the engine's building blocks for the run (see stopwatch.py;
exclusive time, so the stages add up to the total):

    probe            rtdetr_prune.pruning.engine.analyse: what may be pruned (once per model)
    graph build      every rtdetr_prune.pruning.engine.trace call (Torch-Pruning's DependencyGraph), incl. the
                     re-trace of each trial copy before its channels are removed
    importance       engine._step_units without the gradients: scoring each group, choosing units
    gradient batches engine._accumulate_gradients: data loading, forward, loss and backward on
                     --grad-batches batches of --batch images per step (group_taylor, group_hessian)
    pruning          engine._apply without its trace: copying the model and removing channels
    FLOP counting    metrics.params_and_gflops (Ultralytics' counter on a fused copy) and the
                     FlopPlanner (its shape-recording forward pass and its predictions)
    other            the rest of prune_to_target (the first copy of the model, bookkeeping)

The unit of cost is one training step of the unpruned model measured in the same run: forward, loss,
backward and an AdamW step on one batch of --batch images at --imgsz. One step is timed before the
first method and after each method; each method is divided by the mean of the steps either side of it,
so a machine whose speed drifts shifts both alike. Sparse training (slim, group_slim, group_sl,
group_reg) is training, not pruning, and is not included. Data: the synthetic shapes set at --imgsz.

Usage:
    python benchmarks/engine_cost.py                                # all 10 methods at 640 (long on CPU)
    python benchmarks/engine_cost.py --imgsz 320 --methods lamp,l1  # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")  # no progress bars: they would be timed too

import torch  # noqa: E402

from rtdetr_prune.data.yolo import data_batches, load_data  # noqa: E402
from rtdetr_prune.measure import counts as metrics  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.pruning import engine  # noqa: E402
from rtdetr_prune.pruning.methods import METHODS, get_method  # noqa: E402
from rtdetr_prune.pruning.planner import FlopPlanner  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, md_machine, md_table, set_threads, synthetic_data, write_results  # noqa: E402
from stopwatch import Stopwatch  # noqa: E402

# (owner, attribute, stage): what is timed, and which stage (table column) it counts for.
STAGES = [
    (engine, "analyse", "probe"),
    (engine, "trace", "graph build"),
    (engine, "_step_units", "importance"),
    (engine, "_accumulate_gradients", "gradient batches"),
    (engine, "_apply", "pruning"),
    (metrics, "params_and_gflops", "FLOP counting"),
    (FlopPlanner, "__init__", "FLOP counting"),
    (FlopPlanner, "predict", "FLOP counting"),
    (FlopPlanner, "unit_cost", "FLOP counting"),
]
COLUMNS = ["probe", "graph build", "importance", "gradient batches", "pruning", "FLOP counting", "other"]


def _label(owner, attr: str) -> str:
    return f"{owner.__name__.split('.')[-1]}.{attr}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="rtdetr-r18", help="zoo name or model file")
    p.add_argument("--nc", type=int, default=10, help="classes of a model built from a zoo name")
    p.add_argument("--imgsz", type=int, default=640, help="image size for GFLOPs, batches and the training step")
    p.add_argument("--speed-up", type=float, default=2.0, help="target: base GFLOPs / pruned GFLOPs")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
    p.add_argument("--batch", type=int, default=8, help="images per training step and per gradient batch")
    p.add_argument("--grad-batches", type=int, default=8, help="gradient batches per step (engine default 8)")
    p.add_argument("--images", type=int, default=96, help="synthetic images (3/4 train)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    p.add_argument("--out", default=str(RESULTS), help="folder for engine_cost.json and .md")
    return p.parse_args(argv)


def prune_cost(name: str, args, batches) -> dict:
    """Prune a fresh model with one method under the stopwatch; its stages, total and result."""
    torch.manual_seed(0)
    model = load_model(args.model, nc=args.nc)
    method = get_method(name)
    options = engine.PruneOptions(speed_up=args.speed_up, imgsz=args.imgsz, grad_batches=args.grad_batches)
    watch = Stopwatch()
    with watch.patched([(owner, attr, _label(owner, attr)) for owner, attr, _ in STAGES]):
        t0 = time.perf_counter()
        result = engine.prune_to_target(model, method, options, batches if method.needs_gradients else None)
        total = time.perf_counter() - t0
    seconds = dict.fromkeys(COLUMNS, 0.0)
    for owner, attr, column in STAGES:
        seconds[column] += watch.seconds.get(_label(owner, attr), 0.0)
    seconds["other"] = total - sum(seconds.values())
    return {"method": name, "total_s": total, "seconds": seconds, "steps": result.steps,
            "speed_up": result.speed_up, "message": result.message,
            "functions": {k: {"seconds": watch.seconds[k], "calls": watch.calls[k]} for k in watch.seconds}}

class TrainStep:
    """One training step of the unpruned model: forward, loss, backward, AdamW step (RT-DETR's optimizer)."""

    def __init__(self, model: torch.nn.Module, batch: dict):
        self.model, self.batch = model.train().requires_grad_(True), batch
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def seconds(self) -> float:
        t0 = time.perf_counter()
        loss, _ = self.model.loss(self.batch)
        loss.sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def markdown(result: dict) -> str:
    s = result["settings"]
    head = ["method", "steps", "speed-up", "total s"] + [f"{c} s" for c in COLUMNS] + ["train steps"]
    rows = [[r["method"], r["steps"], f"{r['speed_up']:.3f}x", f"{r['total_s']:.1f}"]
            + [f"{r['seconds'][c]:.1f}" for c in COLUMNS] + [f"{r['train_steps']:.2f}"] for r in result["rows"]]
    return "\n".join([
        f"## Engine cost: {s['model']} (nc={s['nc']}) to {s['speed_up']:g}x at {s['imgsz']} px, CPU",
        "", md_machine(result["machine"]), "",
        f"Training step (batch {s['batch']}, {s['imgsz']} px, forward+loss+backward+AdamW): median "
        f"{result['train_step_median_s']:.1f} s of {len(result['train_steps_s'])} "
        f"({', '.join(f'{t:.1f}' for t in result['train_steps_s'])}). Gradient methods: {s['grad_batches']} "
        f"batches of {s['batch']} synthetic images per step. 'train steps' = total / the mean of the training "
        "steps timed just before and after that method.", "",
        md_table(head, rows),
    ])


def headline(result: dict) -> str:
    s = result["settings"]
    parts = [f"{r['method']} {r['total_s']:.0f} s = {r['train_steps']:.2f} train steps" for r in result["rows"]]
    return f"engine cost ({s['model']} @{s['imgsz']} -> {s['speed_up']:g}x, CPU): " + "; ".join(parts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = [get_method(n.strip()).name for n in args.methods.split(",") if n.strip()]
    set_threads(args.threads)
    info = machine()  # before any work: Ultralytics' trainer may change the thread count
    with tempfile.TemporaryDirectory(prefix="engine-cost-shapes-") as folder:
        batches = data_batches(load_data(synthetic_data(folder, args.imgsz, args.images, args.nc)), args.imgsz,
                               args.batch)
        train = TrainStep(load_model(args.model, nc=args.nc), next(iter(batches())))
        train.seconds()  # warm-up: allocator, lazy init
        steps, rows = [train.seconds()], []
        for name in names:
            row = prune_cost(name, args, batches)
            steps.append(train.seconds())
            row["train_step_s"] = statistics.mean(steps[-2:])
            row["train_steps"] = row["total_s"] / row["train_step_s"]
            rows.append(row)
            print(f"{name}: {row['total_s']:.1f} s = {row['train_steps']:.2f} train steps; {row['message']}",
                  flush=True)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "train_steps_s": steps, "train_step_median_s": statistics.median(steps), "rows": rows}
    result["headline"] = headline(result)
    write_results(args.out, "engine_cost", result, markdown(result))
    print(result["headline"])
    return result


if __name__ == "__main__":
    main()
