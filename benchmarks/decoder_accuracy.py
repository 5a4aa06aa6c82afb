"""Decoder pruning vs none, at the same measured speed-up: how much accuracy does each keep? (issue 13)

From a trained baseline (default: the shipped demo model, ``rtdetr-tiny`` trained on the synthetic shapes set;
or --baseline PATH with --data YAML), each arm is one ``rtdetr_prune.prune(...)`` run, identical but for its
decoder options: pruned to the same *measured* speed-up (``--target latency``, --backend at batch
--latency-batch; or ``--target gflops``), finetuned --epochs, evaluated on the val split. A control (the
baseline finetuned the same epochs) gives retention = arm's finetuned mAP50-95 / control's.

Arms (``--arms``, separated by ``;``): each a --decoder-parts value, optionally ``@K`` for --decoder-layers K,
e.g. ``none;memory,value,ffn,mlp;memory,value;memory,value,ffn,mlp@2``. The latency target is timed in this
process: run it on an idle machine (load average below 1.5), or use ``--target gflops`` for an accuracy-only
comparison at equal GFLOPs. The accuracy benchmark proper (benchmarks/accuracy.py) takes the same recipe
options (decoder_parts, decoder_layers, target, backend) for its arms.

Usage:
    python benchmarks/decoder_accuracy.py                                     # demo model, 1.5x measured, ORT
    python benchmarks/decoder_accuracy.py --target gflops --speed-up 2 --epochs 30
    python benchmarks/decoder_accuracy.py --baseline best.pt --data data.yaml --imgsz 640 --device 0
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, md_machine, md_table, set_threads, write_results  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default=str(ASSET), help="trained model (default: the shipped demo model)")
    p.add_argument("--data", default="", help="data YAML (default: the demo's synthetic set, regenerated)")
    p.add_argument("--arms", default="none;memory,value,ffn,mlp;memory,value")
    p.add_argument("--method", default="lamp")
    p.add_argument("--speed-up", type=float, default=1.5)
    p.add_argument("--target", default="latency", choices=("latency", "gflops"))
    p.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=DEMO_DATA["imgsz"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--round-to", type=int, default=DEMO_ROUND_TO)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default="runs/benchmarks/decoder_accuracy")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def arm(spec: str) -> dict:
    """'memory,value@2' -> {'decoder_parts': 'memory,value', 'decoder_layers': 2}."""
    parts, _, layers = spec.partition("@")
    return {"decoder_parts": parts.strip() or "none", "decoder_layers": int(layers or 0)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(None)
    info, load_before = machine(), os.getloadavg()[0]
    work = Path(args.workdir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    if args.data:
        data = args.data
    else:
        from rtdetr_prune.data import make_synthetic

        data = str(make_synthetic(work / "data", **DEMO_DATA))
    baseline = save_checkpoint(load_model(args.baseline), work / "baseline.pt", {"data": data, "imgsz": args.imgsz})
    common = dict(data=data, method=args.method, speed_up=args.speed_up, target=args.target, backend=args.backend,
                  latency_batch=args.latency_batch, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                  round_to=args.round_to, workers=0, device=args.device, project=str(work), latency=False)
    control = _control(args, data, baseline, work)
    rows = []
    for spec in [s for s in args.arms.split(";") if s.strip()]:
        t0 = time.perf_counter()
        options = arm(spec)
        report = rtdetr_prune.prune(model=str(baseline), name=spec.replace(",", "+").replace("@", "-L"),
                                    **options, **common)
        rows.append({"arm": spec, **options, "gflops_speed_up": report["speed_up_achieved"],
                     "measured_speed_up": report.get("speed_up_measured"),
                     "finetuned_map50_95": report["finetuned"]["map50_95"],
                     "retention": report["finetuned"]["map50_95"] / control["map50_95"],
                     "minutes": (time.perf_counter() - t0) / 60, "run_dir": report["run_dir"]})
        print(f"{spec}: {rows[-1]}", flush=True)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "load_before": load_before, "load_after": os.getloadavg()[0], "control": control, "rows": rows}
    result["headline"] = ("decoder accuracy (retention at the same "
                          f"{'measured' if args.target == 'latency' else 'GFLOPs'} {args.speed_up:g}x): "
                          + ", ".join(f"[{r['arm']}] {r['retention']:.0%}" for r in rows))
    write_results(args.out, "decoder_accuracy", result, markdown(result))
    print(result["headline"])
    return result


def _control(args, data: str, baseline: Path, work: Path) -> dict:
    """The baseline finetuned the same epochs: what every arm is compared with."""
    from rtdetr_prune.models.ultralytics.trainer import finetune

    trainer = finetune(baseline, data, args.epochs, args.imgsz, args.batch, args.device, 0, work, "control", seed=0)
    best = trainer.best if trainer.best.is_file() else trainer.last
    m50, m5095 = val_map(load_model(best), data, args.imgsz, args.batch, args.device, 0, work / "val-control")
    return {"map50": m50, "map50_95": m5095}


def markdown(result: dict) -> str:
    s = result["settings"]
    head = ["arm (decoder parts @ layers)", "GFLOPs speed-up", "measured speed-up", "finetuned mAP50-95",
            "retention vs control", "minutes"]
    rows = [[r["arm"], f"{r['gflops_speed_up']:.3f}x",
             f"{r['measured_speed_up']:.3f}x" if r["measured_speed_up"] else "-", f"{r['finetuned_map50_95']:.3f}",
             f"{r['retention']:.1%}", f"{r['minutes']:.1f}"] for r in result["rows"]]
    return "\n".join([f"## Decoder pruning vs none: {s['method']} to {s['speed_up']:g}x ({s['target']}, "
                      f"{s['backend']}), {s['epochs']} finetune epochs", "", md_machine(result["machine"]),
                      f"; load average before {result['load_before']}, after {result['load_after']}", "",
                      f"Control (baseline finetuned {s['epochs']} epochs): mAP50-95 {result['control']['map50_95']:.3f}.",
                      "", md_table(head, rows)])


if __name__ == "__main__":
    main()
