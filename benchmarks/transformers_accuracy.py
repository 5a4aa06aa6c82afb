"""Accuracy retention for the transformers family: a small transformers RT-DETR trained on the synthetic set,
pruned and finetuned, against the unpruned model finetuned the same way (issue 14's third acceptance check).

    baseline   ``hf-rtdetr-tiny`` (random weights) trained for --base-epochs on the synthetic shapes set with
               the family's trainer (Ultralytics' RT-DETR trainer running the model through its DetectionView)
    control    the baseline finetuned for --epochs by the same function the pipeline's finetune stage calls
    run        ``rtdetr_prune.prune(model=<baseline safe dir>, method, speed_up, epochs)``: prune, finetune, val

Retention = the run's finetuned mAP50-95 / the control's; the check passes at 95% or more. One seed, a
small val split: read single numbers with care (docs/benchmarks.md saw repeats move entries by 20 points).

Usage:
    python benchmarks/transformers_accuracy.py                       # 96 images, 100 + 30 + 30 epochs, CPU
    python benchmarks/transformers_accuracy.py --base-epochs 20 --epochs 5   # a quick look
    python benchmarks/transformers_accuracy.py --method group_taylor --baseline runs/.../baseline/weights/best_safe

Results: results/transformers_accuracy_<method>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import rtdetr_prune  # noqa: E402
from rtdetr_prune.measure.stage import val_map  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.models.transformers.trainer import finetune, save_checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, md_machine, md_table, set_threads, synthetic_data, write_results  # noqa: E402

IMGSZ, BATCH, NC = 160, 16, 3


def train(start_model, data: str, epochs: int, work: Path, name: str, device: str) -> Path:
    """Train ``start_model`` for ``epochs`` with the family's trainer; the kept epoch as a safe directory."""
    start = save_checkpoint(start_model, work / f"{name}-start.pt", train_args={"data": data, "imgsz": IMGSZ})
    return finetune(start, data, epochs, IMGSZ, BATCH, device, 0, work, name, seed=0, exist_ok=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hf-rtdetr-tiny")
    p.add_argument("--method", default="lamp")
    p.add_argument("--speed-up", type=float, default=1.5)
    p.add_argument("--images", type=int, default=96, help="synthetic images in total (1/4 val)")
    p.add_argument("--base-epochs", type=int, default=100, help="training of the baseline from random weights")
    p.add_argument("--baseline", default=None, help="a trained baseline (a safe directory) instead of training one")
    p.add_argument("--epochs", type=int, default=30, help="finetune epochs (run and control)")
    p.add_argument("--round-to", type=int, default=8, help="channel unit (the tiny model's layers are 16-128 wide)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="runs/benchmarks/transformers-accuracy")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    set_threads(args.threads)
    info = machine()
    work = Path(args.workdir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    data = synthetic_data(work / "data", IMGSZ, args.images, nc=NC)
    torch.manual_seed(0)
    if args.baseline:  # trained earlier on the same data (the synthetic set is rebuilt identically from its seed)
        baseline, args.base_epochs = Path(args.baseline), None
    else:
        baseline = train(load_model(args.model, nc=NC), data, args.base_epochs, work, "baseline", args.device)
    base_map = val_map(load_model(baseline), data, IMGSZ, BATCH, args.device, 0, work / "val-baseline")
    control = train(load_model(baseline), data, args.epochs, work, "control", args.device)
    control_map = val_map(load_model(control), data, IMGSZ, BATCH, args.device, 0, work / "val-control")
    print(f"baseline mAP50-95 {base_map[1]:.3f}, control {control_map[1]:.3f}", flush=True)
    report = rtdetr_prune.prune(model=str(baseline), data=data, method=args.method, speed_up=args.speed_up,
                                epochs=args.epochs, imgsz=IMGSZ, batch=BATCH, workers=0, device=args.device,
                                project=str(work), name="pruned", round_to=args.round_to, latency=False)
    retention = report["finetuned"]["map50_95"] / control_map[1] if control_map[1] else float("nan")
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "baseline_map50_95": base_map[1], "control_map50": control_map[0], "control_map50_95": control_map[1],
              "report": {k: report[k] for k in ("speed_up_achieved", "baseline", "pruned", "finetuned")},
              "retention": retention, "passes": retention >= 0.95, "minutes": (time.perf_counter() - t0) / 60}
    s, r = result["settings"], report
    md = "\n\n".join([
        f"## transformers RT-DETR accuracy retention: {s['model']}, {s['method']} {s['speed_up']:g}x, synthetic shapes",
        md_machine(info),
        f"{s['images']} images at {IMGSZ} px (1/4 val), batch {BATCH}, round_to {s['round_to']}, baseline "
        + (f"trained {s['base_epochs']} epochs from random weights" if s["base_epochs"] else f"from {s['baseline']}")
        + f", {s['epochs']} finetune epochs (run and control), device "
        f"'{s['device']}', seed 0. Total {result['minutes']:.0f} minutes.",
        md_table(["model", "GFLOPs", "mAP50", "mAP50-95"], [
            ["baseline", r["baseline"]["gflops"], f"{r['baseline']['map50']:.3f}", f"{r['baseline']['map50_95']:.3f}"],
            [f"control (baseline + {s['epochs']} epochs)", r["baseline"]["gflops"], f"{control_map[0]:.3f}",
             f"{control_map[1]:.3f}"],
            [f"pruned ({r['speed_up_achieved']:.3f}x)", r["pruned"]["gflops"], f"{r['pruned']['map50']:.3f}",
             f"{r['pruned']['map50_95']:.3f}"],
            [f"pruned + {s['epochs']} epochs", r["finetuned"]["gflops"], f"{r['finetuned']['map50']:.3f}",
             f"{r['finetuned']['map50_95']:.3f}"]]),
        f"Retention (finetuned / control mAP50-95): {retention:.1%} ({'passes' if result['passes'] else 'fails'} "
        "the 95% bar).",
    ])
    write_results(args.out, f"transformers_accuracy_{args.method}", result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
