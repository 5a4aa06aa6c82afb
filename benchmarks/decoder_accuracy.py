"""Decoder pruning vs none, at the same measured speed-up: how much accuracy does each keep? (issue 13)

From a trained baseline (default: the shipped demo model, ``rtdetr-tiny`` trained on the synthetic shapes set;
or --baseline PATH with --data YAML), each arm is one ``rtdetr_prune.prune(...)`` run, identical but for its
decoder options: pruned to the same *measured* speed-up (``--target latency``, --backend at batch
--latency-batch; or ``--target gflops``), finetuned --epochs, evaluated on the val split. A control (the
baseline finetuned the same epochs) gives retention = arm's finetuned mAP50-95 / control's.

Arms (``--arms``, separated by ``;``): each a --decoder-parts value, optionally ``@K`` for --decoder-layers K
and ``/la`` for --latency-aware ranking (its per-layer time table measured on --backend), e.g.
``none;memory,value,ffn,mlp;memory,value;memory,value,ffn,mlp@2;memory,value,ffn,mlp/la``. The latency target is
timed in this process: run it on an idle machine (load average below 1.5), or use ``--target gflops`` for an
accuracy-only comparison at equal GFLOPs. The accuracy benchmark proper (benchmarks/accuracy.py) takes the same recipe
options (decoder_parts, decoder_layers, target, backend) for its arms.

With --seeds N every arm and the control are finetuned once per seed (0..N-1; the seed also seeds the prune
run); each arm's retention is given as mean and 95% interval over the seeds, and its difference from the first
arm per seed (paired: same seed, same control).

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
from _accuracy_report import cell, mean_ci  # noqa: E402
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
    p.add_argument("--seeds", type=int, default=3, help="finetune seeds per arm and control (0..N-1)")
    p.add_argument("--imgsz", type=int, default=DEMO_DATA["imgsz"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--round-to", type=int, default=DEMO_ROUND_TO)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default="runs/benchmarks/decoder_accuracy")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def arm(spec: str) -> dict:
    """'memory,value@2/la' -> {'decoder_parts': 'memory,value', 'decoder_layers': 2, 'latency_aware': True,
    'sensitivity': 0} (latency-aware ranking replaces the sensitivity profile)."""
    spec, _, ranking = spec.partition("/")
    if ranking.strip() not in ("", "la"):
        raise SystemExit(f"arm {spec!r}: the part after '/' must be 'la' (latency-aware ranking), got {ranking!r}")
    parts, _, layers = spec.partition("@")
    aware = ranking.strip() == "la"
    return {"decoder_parts": parts.strip() or "none", "decoder_layers": int(layers or 0), "latency_aware": aware,
            **({"sensitivity": 0} if aware else {})}


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
    controls, rows = {}, []
    arms = [s for s in args.arms.split(";") if s.strip()]
    for seed in range(args.seeds):
        controls[seed] = _control(args, data, baseline, work, seed)
        for spec in arms:
            t0 = time.perf_counter()
            options = arm(spec)
            name = spec.replace(",", "+").replace("@", "-L").replace("/", "-") + f"-s{seed}"
            report = rtdetr_prune.prune(model=str(baseline), name=name, seed=seed, **options, **common)
            rows.append({"arm": spec, "seed": seed, **options, "gflops_speed_up": report["speed_up_achieved"],
                         "measured_speed_up": report.get("speed_up_measured"),
                         "finetuned_map50_95": report["finetuned"]["map50_95"],
                         "retention": report["finetuned"]["map50_95"] / controls[seed]["map50_95"],
                         "minutes": (time.perf_counter() - t0) / 60, "run_dir": report["run_dir"]})
            print(f"{spec} seed {seed}: {rows[-1]}", flush=True)
    summary = summarize(rows, arms)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "load_before": load_before, "load_after": os.getloadavg()[0], "controls": controls, "rows": rows,
              "summary": summary}
    result["headline"] = ("decoder accuracy (retention at the same "
                          f"{'measured' if args.target == 'latency' else 'GFLOPs'} {args.speed_up:g}x, "
                          f"{args.seeds} seeds): " + ", ".join(f"[{a['arm']}] {cell(a['retention'])}" for a in summary))
    write_results(args.out, "decoder_accuracy", result, markdown(result))
    print(result["headline"])
    return result


def summarize(rows: list[dict], arms: list[str]) -> list[dict]:
    """Per arm: retention (mean, 95% interval over seeds), its paired difference from the first arm, speed-ups."""
    first = {r["seed"]: r["retention"] for r in rows if r["arm"] == arms[0]}
    out = []
    for spec in arms:
        mine = [r for r in rows if r["arm"] == spec]
        measured = [r["measured_speed_up"] for r in mine if r["measured_speed_up"]]
        out.append({"arm": spec, "retention": mean_ci([r["retention"] for r in mine]),
                    "vs_first": mean_ci([r["retention"] - first[r["seed"]] for r in mine if r["seed"] in first]),
                    "gflops_speed_up": sum(r["gflops_speed_up"] for r in mine) / len(mine),
                    "measured_speed_up": sum(measured) / len(measured) if measured else None,
                    "minutes": sum(r["minutes"] for r in mine) / len(mine)})
    return out


def _control(args, data: str, baseline: Path, work: Path, seed: int) -> dict:
    """The baseline finetuned the same epochs with the same seed: what the arms of that seed are compared with."""
    from rtdetr_prune.models.ultralytics.trainer import finetune

    trainer = finetune(baseline, data, args.epochs, args.imgsz, args.batch, args.device, 0, work, f"control-s{seed}",
                       seed=seed)
    best = trainer.best if trainer.best.is_file() else trainer.last
    m50, m5095 = val_map(load_model(best), data, args.imgsz, args.batch, args.device, 0, work / f"val-control-s{seed}")
    return {"map50": m50, "map50_95": m5095}


def markdown(result: dict) -> str:
    s = result["settings"]
    head = ["arm (decoder parts @ layers)", "GFLOPs speed-up", "measured speed-up", "retention vs control",
            f"vs [{result['summary'][0]['arm']}] (points)", "minutes per run"]
    rows = [[a["arm"], f"{a['gflops_speed_up']:.3f}x",
             f"{a['measured_speed_up']:.3f}x" if a["measured_speed_up"] else "-", cell(a["retention"]),
             _points(a["vs_first"]), f"{a['minutes']:.1f}"] for a in result["summary"]]
    per_run = [[r["arm"], r["seed"], f"{r['gflops_speed_up']:.3f}x",
                f"{r['measured_speed_up']:.3f}x" if r["measured_speed_up"] else "-", f"{r['finetuned_map50_95']:.3f}",
                f"{result['controls'][r['seed']]['map50_95']:.3f}", f"{r['retention']:.1%}"] for r in result["rows"]]
    return "\n".join([f"## Decoder pruning vs none: {s['method']} to {s['speed_up']:g}x ({s['target']}, "
                      f"{s['backend']}), {s['epochs']} finetune epochs, {s['seeds']} seeds", "",
                      md_machine(result["machine"]),
                      f"; load average before {result['load_before']}, after {result['load_after']}", "",
                      "Retention: finetuned mAP50-95 / the control's (the baseline finetuned the same epochs, same "
                      "seed); mean ± 95% interval half-width over seeds, in points.", "", md_table(head, rows), "",
                      "Per run:", "", md_table(["arm", "seed", "GFLOPs speed-up", "measured speed-up",
                                                "finetuned mAP50-95", "control mAP50-95", "retention"], per_run)])


def _points(ci: dict) -> str:
    if ci["n"] == 0:
        return "-"
    if ci["half_width"] is None:
        return f"{100 * ci['mean']:+.1f} (n=1)"
    return f"{100 * ci['mean']:+.1f} ± {100 * ci['half_width']:.1f}"


if __name__ == "__main__":
    main()
