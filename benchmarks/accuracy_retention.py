"""Accuracy retention: every method at each target, finetuned, against the baseline finetuned the same way.

From the demo baseline (``rtdetr-tiny`` trained on the synthetic shapes set, shipped in
``src/rtdetr_prune/assets/demo-tiny``; or --baseline PATH), on the same synthetic data:

    control     the baseline finetuned for --epochs with the same recipe (rtdetr_prune.models.ultralytics.trainer.finetune,
                which the pipeline's finetune stage calls), so that "finetuned" is compared with finetuned
    each run    rtdetr_prune.prune(method, speed_up, epochs, ...): (sparse training), prune, finetune, val

Retention = the run's finetuned mAP50-95 / the control's. The four sparse methods (slim, group_slim,
group_sl, group_reg) sparse-train once (--sparse-epochs) and prune every target from that checkpoint;
their extra training epochs are a head start the control does not get (reported, not corrected).

Profiles (explicit flags override them):
    --quick   2 CPU cores, under 45 minutes (17 measured): 96 images at 160 px (the demo's data), 30 finetune epochs,
              15 sparse epochs
    --full    one GPU: 960 images at 160 px (the baseline's training images are the first 72 of
              them), 100 finetune epochs, 50 sparse epochs

Usage:
    python benchmarks/accuracy_retention.py --quick
    python benchmarks/accuracy_retention.py --full --device 0
    python benchmarks/accuracy_retention.py --quick --methods lamp,l1 --targets 1.5 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")

import rtdetr_prune  # noqa: E402
from rtdetr_prune.demo import ASSET, DEMO_DATA, DEMO_ROUND_TO  # noqa: E402
from rtdetr_prune.measure.stage import val_map  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint  # noqa: E402
from rtdetr_prune.pruning.methods import METHODS, get_method  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, md_machine, md_table, set_threads, write_results  # noqa: E402

PROFILES = {
    "quick": {"images": DEMO_DATA["images"], "epochs": 30, "sparse_epochs": 15, "device": "cpu"},
    "full": {"images": 960, "epochs": 100, "sparse_epochs": 50, "device": ""},
}
BATCH = 16  # as the demo trains; small data, small model
ROUND_TO = DEMO_ROUND_TO  # the demo model's layers are 16-128 channels wide: units of 8, as the demo prunes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="profile", const="quick", help="2 CPU cores, under 45 min")
    g.add_argument("--full", action="store_const", dest="profile", const="full", help="one GPU")
    p.add_argument("--baseline", default=None, help=f"baseline model (default: the shipped {ASSET.name})")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--targets", default="1.5,2")
    p.add_argument("--epochs", type=int, default=None, help="finetune epochs (run and control)")
    p.add_argument("--sparse-epochs", type=int, default=None)
    p.add_argument("--images", type=int, default=None, help="synthetic images in total (1/4 val)")
    p.add_argument("--device", default=None, help="cpu, 0, ... (default: the profile's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--round-to", type=int, default=ROUND_TO, help=f"channel unit (default {ROUND_TO}, as the demo)")
    p.add_argument("--workdir", default="runs/benchmarks/accuracy", help="run directories go here")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    for key, value in PROFILES[args.profile or "quick"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.profile = args.profile or "quick"
    return args


def baseline_checkpoint(args, data: str, work: Path) -> Path:
    """The baseline as an Ultralytics .pt (what finetune takes): --baseline, the shipped one, or trained now."""
    spec = args.baseline or (ASSET if ASSET.exists() else None)
    if spec is None:  # no shipped checkpoint in this checkout: train one as scripts/make_demo_checkpoint.py does
        from rtdetr_prune.models.ultralytics.trainer import train_baseline

        print("no shipped demo checkpoint: training a baseline (100 epochs)", flush=True)
        trainer = train_baseline("rtdetr-tiny", data, epochs=100, imgsz=DEMO_DATA["imgsz"], batch=BATCH,
                                 device=args.device, workers=0, project=work, name="baseline", seed=0)
        spec = trainer.best
    path = work / "baseline.pt"
    save_checkpoint(load_model(spec), path, train_args={"data": data, "imgsz": DEMO_DATA["imgsz"]})
    return path


def control(args, data: str, baseline: Path, work: Path) -> dict:
    """The baseline before and after the same finetuning the pruned models get."""
    from rtdetr_prune.models.ultralytics.trainer import finetune

    imgsz = DEMO_DATA["imgsz"]
    before = val_map(load_model(baseline), data, imgsz, BATCH, args.device, 0, work / "val-baseline")
    trainer = finetune(baseline, data, args.epochs, imgsz, BATCH, args.device, 0, work, "control", seed=0)
    best = trainer.best if trainer.best.is_file() else trainer.last
    after = val_map(load_model(best), data, imgsz, BATCH, args.device, 0, work / "val-control")
    return {"baseline_map50_95": before[1], "control_map50": after[0], "control_map50_95": after[1]}


def run(args, data: str, baseline: Path, work: Path, method: str, target: float, sparse: dict) -> dict:
    """One pipeline run; a sparse method reuses its first run's sparse checkpoint (``sparse``: method -> path)."""
    extra = {"sparse_model": sparse[method]} if method in sparse else {}
    report = rtdetr_prune.prune(model=str(baseline), data=data, method=method, speed_up=target, epochs=args.epochs,
                                sparse_epochs=args.sparse_epochs, imgsz=DEMO_DATA["imgsz"], batch=BATCH,
                                workers=0, device=args.device, project=str(work), name=f"{method}-{target:g}x",
                                round_to=args.round_to, latency=False, **extra)
    state = Path(report["run_dir"]) / "state.json"
    if get_method(method).needs_sparse_training and method not in sparse:
        sparse[method] = json.loads(state.read_text())["sparse"]["checkpoint"]
    return {"method": method, "target": target, "speed_up": report["speed_up_achieved"],
            "gflops": report["pruned"]["gflops"], "pruned_map50_95": report["pruned"]["map50_95"],
            "finetuned_map50": report["finetuned"]["map50"], "finetuned_map50_95": report["finetuned"]["map50_95"],
            "run_dir": report["run_dir"]}


def markdown(result: dict) -> str:
    s, c = result["settings"], result["control"]
    head = ["method", "target", "speed-up", "mAP50-95 pruned", "mAP50-95 finetuned", "retention vs control",
            "minutes"]
    rows = [[r["method"], f"{r['target']:g}x", f"{r['speed_up']:.3f}x", f"{r['pruned_map50_95']:.3f}",
             f"{r['finetuned_map50_95']:.3f}", f"{r['retention']:.1%}", f"{r['minutes']:.1f}"] for r in result["rows"]]
    return "\n".join([
        f"## Accuracy retention ({s['profile']} profile): rtdetr-tiny demo baseline, synthetic shapes",
        "", md_machine(result["machine"]), "",
        f"{s['images']} images at {DEMO_DATA['imgsz']} px (1/4 val), batch {BATCH}, round_to {s['round_to']}, "
        f"{s['epochs']} finetune epochs, "
        f"{s['sparse_epochs']} sparse epochs (sparse methods), device '{s['device']}', seed 0. "
        f"Baseline mAP50-95 {c['baseline_map50_95']:.3f}; control (baseline finetuned {s['epochs']} epochs) "
        f"{c['control_map50_95']:.3f}. Total {result['minutes']:.0f} minutes.", "",
        md_table(head, rows),
    ])


def headline(result: dict) -> str:
    cells = [f"{r['method']}@{r['target']:g}x {r['retention']:.0%}" for r in result["rows"]]
    return (f"accuracy retention (finetuned mAP50-95 / control {result['control']['control_map50_95']:.3f}, "
            f"{result['settings']['profile']}): " + ", ".join(cells))


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    info = machine()  # before any work: Ultralytics' trainer may change the thread count
    names = [get_method(n.strip()).name for n in args.methods.split(",") if n.strip()]
    targets = [float(t) for t in args.targets.split(",")]
    work = Path(args.workdir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    t_start = time.perf_counter()
    from rtdetr_prune.data import make_synthetic

    data = str(make_synthetic(work / "data", images=args.images, imgsz=DEMO_DATA["imgsz"], seed=DEMO_DATA["seed"]))
    baseline = baseline_checkpoint(args, data, work)
    ctrl = control(args, data, baseline, work)
    print(f"control: {ctrl}", flush=True)
    rows, sparse = [], {}
    for name in names:
        for target in targets:
            t0 = time.perf_counter()
            row = run(args, data, baseline, work, name, target, sparse)
            row["retention"] = row["finetuned_map50_95"] / ctrl["control_map50_95"]
            row["minutes"] = (time.perf_counter() - t0) / 60
            rows.append(row)
            print(f"{name} {target:g}x: finetuned mAP50-95 {row['finetuned_map50_95']:.3f} "
                  f"({row['retention']:.1%} of control) in {row['minutes']:.1f} min", flush=True)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "control": ctrl, "rows": rows, "minutes": (time.perf_counter() - t_start) / 60}
    result["headline"] = headline(result)
    write_results(args.out, f"accuracy_retention_{args.profile}", result, markdown(result))
    print(result["headline"])
    return result


if __name__ == "__main__":
    main()
