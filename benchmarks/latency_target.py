"""--target latency: does pruning to a measured speed-up land within 5% of it? (issue 13's acceptance)

``rtdetr-r18`` (10 classes, random weights, seed 0; or --model) is pruned with --method to each --targets
*measured* speed-up on each --backends runtime (CPU unless --device), exactly as ``rtdetr-prune prune --target
latency`` does it (:func:`rtdetr_prune.pruning.latency_target.prune_to_latency` with a
:class:`~rtdetr_prune.bench.meter.LatencyMeter`: base and candidate timed interleaved in this process). Then each
result is timed again, independently, against the base (:func:`rtdetr_prune.bench.latency.bench`, fresh
export, more rounds): that second measurement is what is judged against the target. Per run: the measured
speed-up the search ended at, the re-measured one, the GFLOPs speed-up next to them, the timed candidates and
the wall time. Time only on an idle machine (load average below 1.5): every number is a ratio of timings.

Usage:
    python benchmarks/latency_target.py                                  # r18, 640, batch 8, ORT and torch
    python benchmarks/latency_target.py --model rtdetr-tiny --imgsz 160 --targets 1.5 --repeats 3   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")

import torch  # noqa: E402

from rtdetr_prune.bench.latency import bench  # noqa: E402
from rtdetr_prune.bench.meter import LatencyMeter  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.pruning.analysis.prunable import analyse  # noqa: E402
from rtdetr_prune.pruning.engine import PruneOptions  # noqa: E402
from rtdetr_prune.pruning.latency_aware import LayerCosts  # noqa: E402
from rtdetr_prune.pruning.latency_target import prune_to_latency  # noqa: E402
from rtdetr_prune.pruning.methods import get_method  # noqa: E402
from rtdetr_prune.recipe import default  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import (RESULTS, machine, md_machine, md_table, model_args, set_threads,  # noqa: E402
                     write_results)

WINDOW = 0.05  # the acceptance: within 5% of the asked measured speed-up


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_args(p)
    p.add_argument("--method", default="lamp")
    p.add_argument("--targets", default="1.5,2,3", help="comma-separated measured speed-ups")
    p.add_argument("--backends", default="onnxruntime,torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder-parts", default=default("decoder_parts"), help="as the recipe's --decoder-parts")
    p.add_argument("--latency-aware", action="store_true", help="rank channels by a measured per-layer time table")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per timed candidate")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per candidate at least (the search)")
    p.add_argument("--max-repeats", type=int, default=None, help="timed rounds per candidate at most, while the "
                   "rounds disagree by more than 2%% (default 3 x --repeats)")
    p.add_argument("--no-confirm", action="store_true", help="accept a candidate on its first timing")
    p.add_argument("--check-repeats", type=int, default=10, help="timed rounds of the independent re-measurement")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def one_run(base, plan, args, backend: str, target: float) -> dict:
    """Prune ``base`` to ``target`` measured on ``backend``; re-time the result independently."""
    t0 = time.perf_counter()
    options = PruneOptions(speed_up=target, imgsz=args.imgsz, decoder_parts=args.decoder_parts,
                           latency_aware=args.latency_aware)
    costs = LayerCosts.measure(base, args.batch, args.imgsz, backend, args.device) if args.latency_aware else None
    meter = LatencyMeter(base, batch=args.batch, imgsz=args.imgsz, backend=backend, device=args.device,
                         warmup=args.warmup, repeats=args.repeats, max_repeats=args.max_repeats)
    try:
        out = prune_to_latency(base, get_method(args.method), options, meter, plan=plan, costs=costs,
                               confirm=not args.no_confirm)
    finally:
        meter.close()
    search_s = time.perf_counter() - t0
    check = bench([("base", base), ("pruned", out.result.model)], batch=args.batch, imgsz=args.imgsz,
                  backend=backend, device=args.device, warmup=args.warmup, repeats=args.check_repeats)
    again = 1 / check["rows"][1]["latency_ratio"]
    print(f"{backend} {target:g}x: {out.message}; re-measured {again:.3f}x", flush=True)
    return {"backend": backend, "target": target, "measured": out.measured, "remeasured": again,
            "gflops_speed_up": out.result.speed_up, "evaluations": out.evaluations, "search_s": search_s,
            "within": abs(again / target - 1) <= WINDOW, "message": out.message}


def markdown(result: dict) -> str:
    s = result["settings"]
    head = ["backend", "target", "measured (search)", "re-measured", "GFLOPs speed-up", "timed candidates",
            "search s", f"within {WINDOW:.0%}?"]
    rows = [[r["backend"], f"{r['target']:g}x", f"{r['measured']:.3f}x", f"{r['remeasured']:.3f}x",
             f"{r['gflops_speed_up']:.3f}x", len(r["evaluations"]), f"{r['search_s']:.0f}",
             "yes" if r["within"] else "no"] for r in result["rows"]]
    steps = [f"- {r['backend']} {r['target']:g}x: " + "; ".join(_step(e) for e in r["evaluations"])
             for r in result["rows"]]
    return "\n".join([f"## Latency target: {s['model']} at {s['imgsz']} px, batch {s['batch']}, {s['device']}, "
                      f"{s['method']}, decoder parts {s['decoder_parts']}"
                      f"{', latency-aware' if s['latency_aware'] else ''}", "", md_machine(result["machine"]),
                      f"; load average before {result['load_before']}, after {result.get('load_after', '?')}", "",
                      md_table(head, rows), "", "Timed candidates (GFLOPs speed-up -> measured speed-up; each "
                      "timing's ~95% interval half-width and rounds; a landing is timed twice):", "", *steps])


def _step(e: dict) -> str:
    timings = ", ".join(f"{t['speed_up']:.3f}x ±{t['spread']:.1%} ({t['rounds']} rounds)" for t in e.get("timings", []))
    return f"{e['gflops_speed_up']:.3f}x -> {e['measured_speed_up']:.3f}x" + (f" [{timings}]" if timings else "")


def headline(result: dict) -> str:
    cells = [f"{r['backend']} {r['target']:g}x -> {r['remeasured']:.3f}x" for r in result["rows"]]
    ok = sum(r["within"] for r in result["rows"])
    return f"latency target ({ok}/{len(result['rows'])} within {WINDOW:.0%}): " + ", ".join(cells)


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(None)
    torch.manual_seed(0)
    base = load_model(args.model, nc=args.nc)
    plan = analyse(base, PruneOptions.round_to)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine(),
              "load_before": os.getloadavg()[0], "rows": []}
    for backend in filter(None, args.backends.split(",")):
        for target in [float(t) for t in args.targets.split(",")]:
            result["rows"].append(one_run(base, plan, args, backend, target))
            write_results(args.out, "latency_target", result, markdown(result))  # keep what is done so far
    result["load_after"] = os.getloadavg()[0]
    result["headline"] = headline(result)
    write_results(args.out, "latency_target", result, markdown(result))
    print(result["headline"])
    return result


if __name__ == "__main__":
    main()
