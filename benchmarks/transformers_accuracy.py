"""Accuracy retention for the transformers family: a small transformers RT-DETR trained on the synthetic set,
pruned and finetuned, against the unpruned model trained the same number of epochs more (issue 14's third
acceptance check).

    data       the synthetic shapes set at 160 px (3 classes): --train images to train on, --select images the
               trainer validates on to keep its best epoch, and --test held-out images every number below is
               measured on (the select split only picks epochs; it is too small to report)
    baseline   ``hf-rtdetr-tiny`` (random weights) trained for --base-epochs with the family's trainer (Ultralytics'
               RT-DETR trainer running the model through its DetectionView); trained once, seed 0
    control    per seed: the baseline trained --epochs more by the function the pipeline's finetune stage calls
    run        per seed and method: ``rtdetr_prune.prune(model=<baseline>, method, speed_up, ...)``: (sparse
               training), prune, finetune, with a report of all three stages. The run gets the same total
               training as the control: --epochs finetune epochs, or --sparse-epochs of sparse training plus
               --epochs minus that for the sparse methods (group_reg...)

Retention = the run's finetuned test mAP50-95 / the same seed's control; the check passes when the mean over
seeds is 95% or more. The markdown also shows the baseline's select-split curve (has it stopped improving?)
and the control against the baseline (what --epochs more training alone gives).

Finished pieces are kept under --workdir (keyed by the settings that make them): a rerun, or a second
process running other seeds or methods, continues from them.

Usage:
    python benchmarks/transformers_accuracy.py                                    # lamp, 2 seeds, CPU
    python benchmarks/transformers_accuracy.py --method lamp,group_taylor,group_reg
    python benchmarks/transformers_accuracy.py --base-epochs 20 --epochs 5 --seeds 0   # a quick look
    python benchmarks/transformers_accuracy.py --method group_taylor --baseline runs/.../baseline/weights/best_safe

Results: results/transformers_accuracy_<method>[_kd].md and .json (kept in the repo under
results/transformers_accuracy/<N>ep/).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

import rtdetr_prune  # noqa: E402
from rtdetr_prune.measure.stage import val_map  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.models.transformers.trainer import finetune, save_checkpoint  # noqa: E402
from rtdetr_prune.pruning.methods import get_method  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _accuracy_report import cell, mean_ci  # noqa: E402
from _common import RESULTS, machine, md_machine, md_table, set_threads, write_results  # noqa: E402

IMGSZ, BATCH, NC = 160, 16, 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hf-rtdetr-tiny")
    p.add_argument("--method", default="lamp", help="pruning method(s), comma-separated")
    p.add_argument("--speed-up", type=float, default=1.5)
    p.add_argument("--train", type=int, default=72, help="training images (the demo data's 72)")
    p.add_argument("--select", type=int, default=24, help="images the trainer picks its best epoch on")
    p.add_argument("--test", type=int, default=240, help="held-out images every reported mAP is measured on")
    p.add_argument("--base-epochs", type=int, default=250, help="training of the baseline from random weights "
                   "(100 left it improving: 30 more epochs gained 18%)")
    p.add_argument("--baseline", default=None, help="a trained baseline (a safe directory) instead of training one")
    p.add_argument("--epochs", type=int, default=30, help="training epochs after the baseline, for the control and "
                   "every run (sparse epochs included)")
    p.add_argument("--sparse-epochs", type=int, default=10,
                   help="sparse methods: sparse-training epochs, out of --epochs")
    p.add_argument("--seeds", default="0,1", help="finetune and pruning seeds, comma-separated")
    p.add_argument("--distill", action="store_true", help="runs distil from the baseline (the recipe's default loss "
                   "weights); the control trains without a teacher, as a user's plain finetune would")
    p.add_argument("--round-to", type=int, default=8, help="channel unit (the tiny model's layers are 16-128 wide)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="runs/benchmarks/transformers-accuracy")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.method.split(",") if m.strip()]
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    for m in args.methods:
        get_method(m)  # an unknown name fails here, with a suggestion, before hours of training
        if get_method(m).needs_sparse_training and not 0 < args.sparse_epochs < args.epochs:
            p.error(f"{m} sparse-trains: --sparse-epochs must be between 0 and --epochs ({args.epochs}), exclusive")
    return args


def make_data(folder: Path, args) -> tuple[str, str]:
    """(data YAML: train + select, test YAML: train + test) of the shapes set's first three classes. Image i depends
    only on i, so the first 72 train and next 24 select images are the 96 images of the demo's data."""
    from rtdetr_prune.data import SHAPES, make_synthetic

    total = args.train + args.select + args.test
    if not (folder / "test.yaml").is_file():
        make_synthetic(folder, images=total, imgsz=IMGSZ, seed=0, val_fraction=(args.select + args.test) / total,
                       names=tuple(SHAPES)[:NC])
    names = yaml.safe_load((folder / "data.yaml").read_text())["names"]
    val = sorted((folder / "images" / "val").iterdir())
    paths = {}
    for name, files in (("data", val[:args.select]), ("test", val[args.select:])):
        (folder / f"{name}.txt").write_text("".join(f"{f.resolve()}\n" for f in files))
        spec = {"path": str(folder.resolve()), "train": "images/train", "val": f"{name}.txt", "names": names}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        paths[name] = str(folder / f"{name}.yaml")
    return paths["data"], paths["test"]


def train(start, data: str, epochs: int, work: Path, name: str, device: str, seed: int) -> Path:
    """Train ``start`` (a model or a safe directory) ``epochs`` more with the family's trainer, as the pipeline's
    finetune stage does; the kept epoch as a safe directory."""
    model = load_model(start) if not isinstance(start, torch.nn.Module) else start
    ckpt = save_checkpoint(model, work / f"{name}-start.pt", train_args={"data": data, "imgsz": IMGSZ})
    return finetune(ckpt, data, epochs, IMGSZ, BATCH, device, 0, work, name, seed=seed, exist_ok=True)


def test_map(model_or_path, test: str, args, save: Path) -> tuple[float, float]:
    model = load_model(model_or_path) if not isinstance(model_or_path, torch.nn.Module) else model_or_path
    return val_map(model, test, IMGSZ, BATCH, args.device, 0, save)


def cached(path: Path, make) -> dict:
    """``path``'s JSON if a run finished it before, else ``make()``, written there."""
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    row = {**make(), "minutes": None}
    row["minutes"] = (time.perf_counter() - t0) / 60
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def baseline(args, data: str, test: str, work: Path) -> dict:
    def make() -> dict:
        if args.baseline:
            return {"path": str(Path(args.baseline).resolve()), "curve": None}
        torch.manual_seed(0)  # the random initial weights
        path = train(load_model(args.model, nc=NC), data, args.base_epochs, work, "baseline", args.device, seed=0)
        return {"path": str(path), "curve": curve(work / "baseline" / "results.csv")}

    given = str(Path(args.baseline or "").resolve())
    key = f"given-{hashlib.sha1(given.encode()).hexdigest()[:8]}" if args.baseline else f"{args.base_epochs}ep"
    row = cached(work / key / "baseline.json", make)
    row.setdefault("test", test_map(row["path"], test, args, work / key / "val-test"))
    return {**row, "dir": str(work / key)}


def curve(results_csv: Path, parts: int = 5) -> list[float]:
    """The baseline's best select-split mAP50-95 in each fifth of its epochs (flat at the end: it has plateaued)."""
    with open(results_csv) as f:
        maps = [float(r["metrics/mAP50-95(B)"]) for r in csv.DictReader(f)]
    n = len(maps)
    return [round(max(maps[i * n // parts:(i + 1) * n // parts] or [0.0]), 4) for i in range(parts)]


def control(args, base: dict, data: str, test: str, seed: int, work: Path) -> dict:
    def make() -> dict:
        path = train(base["path"], data, args.epochs, work, f"control-seed{seed}", args.device, seed)
        return {"path": str(path), "test": test_map(path, test, args, work / f"val-control-seed{seed}")}

    return cached(work / "rows" / f"control-seed{seed}.json", make)


def run(args, method: str, base: dict, data: str, test: str, seed: int, work: Path) -> dict:
    def make() -> dict:
        sparse = get_method(method).needs_sparse_training
        name = f"{arm_name(method, args)}-seed{seed}"
        report = rtdetr_prune.prune(model=base["path"], data=data, method=method, speed_up=args.speed_up,
                                    epochs=args.epochs - (args.sparse_epochs if sparse else 0),
                                    sparse_epochs=args.sparse_epochs, imgsz=IMGSZ, batch=BATCH, workers=0,
                                    device=args.device, project=str(work), name=name, round_to=args.round_to,
                                    latency=False, seed=seed, distill=args.distill)
        run_dir = Path(report["run_dir"])
        return {"run_dir": str(run_dir), "speed_up": report["speed_up_achieved"], "sparse": sparse,
                "gflops": {k: report[k]["gflops"] for k in ("baseline", "pruned", "finetuned")},
                "select": {k: report[k]["map50_95"] for k in ("baseline", "pruned", "finetuned")},
                "pruned_test": test_map(run_dir / "weights" / "pruned_safe", test, args, run_dir / "val-test-pruned"),
                "finetuned_test": test_map(report_checkpoint(run_dir), test, args, run_dir / "val-test")}

    return cached(work / "rows" / f"{arm_name(method, args)}-seed{seed}.json", make)


def arm_name(method: str, args) -> str:
    """``lamp``, or ``lamp-kd`` when the runs distil."""
    return f"{method}-kd" if args.distill else method


def report_checkpoint(run_dir: Path) -> str:
    return json.loads((run_dir / "state.json").read_text())["finetuned"]["checkpoint"]


def summarize(rows: list[dict]) -> dict:
    r = [row["retention"] for row in rows]
    mean = sum(r) / len(r)
    return {"retention_mean": mean, "retention_min": min(r), "retention_max": max(r), "passes": mean >= 0.95,
            "seeds": len(r), "ci": mean_ci(r)}


def markdown(result: dict, method: str) -> str:
    s, base, m = result["settings"], result["baseline"], result["methods"][method]
    origin = (f"trained {s['base_epochs']} epochs from random weights (seed 0)" if not s["baseline"]
              else f"from {s['baseline']}")
    plateau = (f" Its best select-split mAP50-95 in each fifth of those epochs: {', '.join(map(str, base['curve']))}."
               if base.get("curve") else "")
    sparse = (f"{s['sparse_epochs']} sparse-training epochs + {s['epochs'] - s['sparse_epochs']} finetune epochs"
              if m["rows"][0]["sparse"] else f"{s['epochs']} finetune epochs")
    rows = []
    for r in m["rows"]:
        rows.append([r["seed"], f"{base['test'][1]:.3f}", f"{r['control'][1]:.3f}", f"{r['speed_up']:.3f}x",
                     f"{r['pruned_test'][1]:.3f}", f"{r['finetuned_test'][1]:.3f}", f"{r['retention']:.1%}"])
    summary = m["summary"]
    return "\n\n".join([
        f"## transformers RT-DETR accuracy retention: {s['model']}, {method} {s['speed_up']:g}x"
        + (" with distillation" if s["distill"] else "") + ", synthetic shapes",
        md_machine(result["machine"]),
        f"Command: `{result['command']}` ({result['minutes']:.0f} minutes wall time for this invocation; the pieces "
        "it needed (baseline, controls, runs; some may come from earlier invocations) took "
        f"{result['piece_minutes']:.0f} minutes when they were made).",
        f"Data: synthetic shapes at {IMGSZ} px, {NC} classes: {s['train']} train, {s['select']} select (best-epoch "
        f"choice), {s['test']} test images; every mAP below is on the test split. Batch {BATCH}, round_to "
        f"{s['round_to']}, device '{s['device']}'. Baseline {origin}.{plateau} Control: the baseline + {s['epochs']} "
        f"epochs; run: prune + {sparse} (the same total).",
        md_table(["seed", "baseline", "control", "speed-up", "pruned", "pruned + finetuned", "retention"], rows),
        f"Retention (finetuned / control mAP50-95, same seed): mean {cell(summary['ci'])} (95% interval, points) "
        f"over {summary['seeds']} seed(s) (min {summary['retention_min']:.1%}, max {summary['retention_max']:.1%}); "
        f"{'passes' if summary['passes'] else 'fails'} the 95% bar. Each run's report.md (baseline, pruned and "
        "finetuned stages on the select split) is in its run directory (the JSON's run_dir).",
    ])


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    info, t0 = machine(), time.perf_counter()
    root = Path(args.workdir).resolve() / f"{args.model}-{args.train}-{args.select}-{args.test}"
    data, test = make_data(root / "data", args)
    base = baseline(args, data, test, root)
    print(f"baseline test mAP50-95 {base['test'][1]:.3f}", flush=True)
    work = Path(base["dir"]) / f"{args.epochs}ep-{args.sparse_epochs}sp-{args.speed_up:g}x-r{args.round_to}"
    controls = {seed: control(args, base, data, test, seed, work) for seed in args.seeds}
    methods, pieces = {}, [base, *controls.values()]
    for method in args.methods:
        rows = []
        for seed in args.seeds:
            row = run(args, method, base, data, test, seed, work)
            pieces.append(row)
            c = controls[seed]["test"]
            retention = row["finetuned_test"][1] / c[1] if c[1] else 0.0
            rows.append({"seed": seed, **row, "control": c, "retention": retention})
            print(f"{method} seed {seed}: control {c[1]:.3f}, pruned {row['pruned_test'][1]:.3f}, finetuned "
                  f"{row['finetuned_test'][1]:.3f}, retention {rows[-1]['retention']:.1%}", flush=True)
        methods[method] = {"rows": rows, "summary": summarize(rows)}
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "method")}, "machine": info,
              "command": "python benchmarks/transformers_accuracy.py "
              + shlex.join(argv if argv is not None else sys.argv[1:]),
              "baseline": base, "controls": controls, "methods": methods,
              "minutes": (time.perf_counter() - t0) / 60,
              "piece_minutes": sum(p.get("minutes") or 0 for p in pieces)}
    for method in args.methods:
        md = markdown(result, method)
        write_results(args.out, f"transformers_accuracy_{arm_name(method, args).replace('-', '_')}",
                      {**result, "methods": {method: methods[method]}}, md)
        print(md)
    return result


if __name__ == "__main__":
    main()
