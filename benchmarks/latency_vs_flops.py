"""Latency vs GFLOPs: how much of a GFLOPs cut becomes a latency cut, on CPU, PyTorch and ONNX Runtime.

``rtdetr-r18`` (10 classes, random weights, seed 0; or --model a checkpoint) is pruned to each
--targets speed-up with each --methods method (engine defaults, GFLOPs at --imgsz), then every model
is timed with :func:`rtdetr_prune.bench.latency.bench` (batch --batch, models interleaved, ONNX outputs checked
against PyTorch's). For each pruned model, with ratios pruned / base:

    GFLOPs ratio, latency ratio          below 1 is smaller / faster
    latency ratio / GFLOPs ratio         the issue's goal: at most 1.10 (1.0: every FLOP saved is time saved)
    latency speed-up / GFLOPs speed-up   the same, inverted: share of the FLOP speed-up that became speed

Then, to see where the time goes, one forward pass of the base model and of each ``--profile`` model
is timed per region (backbone, AIFI, the rest of the encoder, decoder) with forward hooks, next to the
region's conv/linear GFLOPs, and per operator with torch.profiler. ``--threads 1,2`` times every
backend once per thread count; ``--round-to 8,16,32`` prunes every model once per channel rounding;
``--decoder-parts "none;memory,value,ffn,mlp"`` once per set of decoder parts (``;`` between sets, labels
then name the set); ``--decoder-layers K`` keeps the first K decoder layers of every pruned model;
``--rankings gflops,onnxruntime`` prunes every model once per ranking (``gflops``: the engine's default; a
backend name: ``--latency-aware`` with the per-layer time table measured on that backend; labels then name the
ranking). With ONNX Runtime among the backends, each profiled model's node profile is also split by region and by
operator type.

Usage:
    python benchmarks/latency_vs_flops.py                                   # 640 px, batch 8, both backends
    python benchmarks/latency_vs_flops.py --imgsz 320 --targets 2 --methods lamp --backends torch --repeats 3
    python benchmarks/latency_vs_flops.py --targets 2 --round-to 8,16,32 --threads 1,2 --profile ""
    python benchmarks/latency_vs_flops.py --targets 2 --decoder-parts "none;memory;value;ffn;mlp;memory,value,ffn,mlp"
    python benchmarks/latency_vs_flops.py --targets 3 --rankings gflops,onnxruntime --backends onnxruntime
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rtdetr_prune.bench.latency import bench, format_bench  # noqa: E402
from rtdetr_prune.errors import UserError  # noqa: E402
from rtdetr_prune.measure.layers import conv_linear_gflops as layer_gflops  # noqa: E402
from rtdetr_prune.models import family_of, load_model  # noqa: E402
from rtdetr_prune.pruning.analysis.prunable import analyse  # noqa: E402
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target  # noqa: E402
from rtdetr_prune.pruning.latency_aware import LayerCosts  # noqa: E402
from rtdetr_prune.pruning.methods import get_method  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, md_machine, md_table, model_args, set_threads, write_results  # noqa: E402

GOAL = 1.10  # the target: pruned/base latency at most 1.10x pruned/base GFLOPs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_args(p)
    p.add_argument("--methods", default="lamp,group_norm")
    p.add_argument("--targets", default="1.5,2,3", help="comma-separated GFLOPs speed-ups")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", default="", help="comma-separated intra-op thread counts, one timing run each "
                   "(default: physical cores)")
    p.add_argument("--round-to", default=str(PruneOptions.round_to),
                   help=f"comma-separated channel roundings to prune with (engine default {PruneOptions.round_to})")
    p.add_argument("--decoder-parts", default=PruneOptions.decoder_parts,
                   help="decoder parts to prune, as the recipe's --decoder-parts; several sets separated by ';' "
                   f"(default: the recipe's, {PruneOptions.decoder_parts})")
    p.add_argument("--decoder-layers", type=int, default=0, help="keep the first K decoder layers (0: all)")
    p.add_argument("--rankings", default="gflops", help="comma-separated: gflops (FLOP ranking) and/or a backend "
                   "(torch, onnxruntime): latency-aware ranking with a per-layer time table measured on it")
    p.add_argument("--atol", type=float, default=None, help="ONNX-vs-PyTorch tolerance (default: bench's, 1e-3)")
    p.add_argument("--profile", default="lamp 2x", help="comma-separated model labels to profile against the base "
                   "('' for none)")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def pruned_models(args) -> dict[str, nn.Module]:
    """{"base": model, "lamp 2x": pruned, ...} in the order they will be timed."""
    torch.manual_seed(0)
    base = load_model(args.model, nc=args.nc)
    plans: dict[int, object] = {}  # round_to -> what may be pruned at that rounding
    models = {"base": base}
    roundings = [int(r) for r in args.round_to.split(",")]
    variants = [v.strip() for v in args.decoder_parts.split(";")]
    rankings = [r.strip() for r in args.rankings.split(",")]
    costs = {r: LayerCosts.measure(base, args.batch, args.imgsz, r) for r in rankings if r != "gflops"}
    for name in args.methods.split(","):
        for target in args.targets.split(","):
            for r in roundings:
                for parts in variants:
                    for ranking in rankings:
                        label = (f"{name} {float(target):g}x" + (f" r{r}" if len(roundings) > 1 else "")
                                 + (f" [{parts}]" if len(variants) > 1 else "")
                                 + (f" {_ranking_label(ranking)}" if len(rankings) > 1 else ""))
                        t0 = time.perf_counter()
                        if r not in plans:
                            plans[r] = analyse(base, r)
                        options = PruneOptions(speed_up=float(target), imgsz=args.imgsz, round_to=r,
                                               decoder_parts=parts, decoder_layers=args.decoder_layers,
                                               latency_aware=ranking != "gflops")
                        models[label] = prune_to_target(base, get_method(name), options, plan=plans[r],
                                                        costs=costs.get(ranking)).model
                        print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)
    return models


def _ranking_label(ranking: str) -> str:
    return "flop-ranked" if ranking == "gflops" else f"latency-aware ({ranking})"


def derived(row: dict) -> dict:
    """The ratios this benchmark is about, from one bench row."""
    lat, fl = row["latency_ratio"], row["gflops_ratio"]
    return {"model": row["model"], "gflops": row["gflops"], "latency_ms": row["latency_ms"], "gflops_ratio": fl,
            "latency_ratio": lat, "latency_over_gflops": lat / fl, "speedup_efficiency": fl / lat,
            "meets_goal": lat / fl <= GOAL, "onnx_max_abs_diff": row["onnx_max_abs_diff"]}


# ---- where the time goes ------------------------------------------------------------------------

def regions(model: nn.Module) -> dict[int, str]:
    """Top-level layer index -> region name (backbone / AIFI / encoder / decoder)."""
    layers = model.model
    names = {}
    for i, m in enumerate(layers):
        kind = type(m).__name__
        names[i] = ("decoder" if i == len(layers) - 1 else "AIFI" if kind == "AIFI"
                    else "backbone" if i < 4 or kind in {"TorchVision", "Index"} else "encoder (CCFF)")
    return names


def region_profile(model: nn.Module, imgsz: int, batch: int, repeats: int = 3) -> dict[str, dict]:
    """Per region: median ms of one batch (forward hooks on the top-level layers) and conv/linear GFLOPs."""
    fused = copy.deepcopy(model).eval().fuse(verbose=False)
    names = regions(fused)
    owner = {m: i for i, layer in enumerate(fused.model) for m in layer.modules()}
    gflops = dict.fromkeys(names.values(), 0.0)
    for m, g in layer_gflops(fused, imgsz).items():
        gflops[names[owner[m]]] += g
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fused(x)  # warm-up, untimed
        timer = _RegionTimer(fused.model, names)
        runs = []
        for _ in range(repeats):
            timer.seconds.clear()
            fused(x)
            runs.append(dict(timer.seconds))
        timer.remove()
    return {r: {"ms": statistics.median(run.get(r, 0.0) for run in runs) * 1000, "gflops": gflops[r]}
            for r in dict.fromkeys(names.values())}


class _RegionTimer:
    """Seconds per region of the forward passes run while it is attached (hooks on top-level layers)."""

    def __init__(self, layers: nn.Sequential, names: dict[int, str]):
        self.names, self.seconds, self.start = names, defaultdict(float), {}
        self.hooks = []
        for i, layer in enumerate(layers):
            self.hooks.append(layer.register_forward_pre_hook(functools.partial(self._enter, i)))
            self.hooks.append(layer.register_forward_hook(functools.partial(self._exit, i)))

    def _enter(self, i, module, args):
        self.start[i] = time.perf_counter()

    def _exit(self, i, module, args, output):
        self.seconds[self.names[i]] += time.perf_counter() - self.start[i]

    def remove(self):
        for h in self.hooks:
            h.remove()


def ort_region_profile(model: nn.Module, imgsz: int, batch: int, threads: int, repeats: int = 3) -> dict[str, dict]:
    """Per region: ms of one batch in ONNX Runtime (its own per-node profile, mean of ``repeats`` runs), and
    under "ops" the same split by operator type (``{"Conv": ms, "GridSample": ms, ...}``).

    Nodes are attributed by the module path the exporter writes into their names (``.../model.N/...``);
    nodes without one (the graph's glue) go to "other".
    """
    import json
    import re
    import tempfile

    from rtdetr_prune.bench import onnx as bench_onnx

    fused = copy.deepcopy(model).eval().fuse(verbose=False)
    names = regions(fused)
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = bench_onnx.export(family_of(fused).export_module(fused), x, Path(tmp) / "model.onnx")
        sess = bench_onnx.session(path, torch.device("cpu"), threads)
        sess.run(None, {bench_onnx.INPUT: x.numpy()})  # warm-up, unprofiled session
        sess = bench_onnx.session(path, torch.device("cpu"), threads, profile_prefix=str(Path(tmp) / "prof"))
        sess.run(None, {bench_onnx.INPUT: x.numpy()})  # warm-up of the profiled session, dropped below
        runs_before = 1
        for _ in range(repeats):
            sess.run(None, {bench_onnx.INPUT: x.numpy()})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = per_run[runs_before]["ts"] if len(per_run) > runs_before else 0  # skip the warm-up run's nodes
    out = {r: {"ms": 0.0, "ops": defaultdict(float)} for r in [*dict.fromkeys(names.values()), "other"]}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        layer = re.search(r"/model\.(\d+)/", e["name"])
        region = out[names[int(layer.group(1))] if layer else "other"]
        region["ms"] += e["dur"] / 1000 / repeats
        region["ops"][e.get("args", {}).get("op_name", "?")] += e["dur"] / 1000 / repeats
    return {r: {"ms": v["ms"], "ops": dict(v["ops"])} for r, v in out.items()}


def ort_op_rows(base: dict[str, dict], pruned: dict[str, dict], gflops_speedup: float, top: int = 12) -> list[list]:
    """Rows of the per-operator-type table (ONNX Runtime, summed over regions), costliest in the pruned model first:
    op type, ms/batch base and pruned, time speed-up, share of the pruned model's time, and the ms the pruned model
    spends beyond what the GFLOPs speed-up would leave (``pruned - base / gflops_speedup``)."""
    def by_op(prof):
        ops = defaultdict(float)
        for region in prof.values():
            for op, ms in region["ops"].items():
                ops[op] += ms
        return ops

    b, p = by_op(base), by_op(pruned)
    total = sum(p.values())
    order = sorted(set(b) | set(p), key=lambda op: -p.get(op, 0.0))[:top]
    return [[op, f"{b.get(op, 0):.1f}", f"{p.get(op, 0):.1f}", _x(b.get(op, 0), p.get(op, 0)),
             f"{p.get(op, 0) / total:.0%}", f"{p.get(op, 0) - b.get(op, 0) / gflops_speedup:+.1f}"] for op in order]


def op_profile(model: nn.Module, imgsz: int, batch: int, top: int = 10) -> list[dict]:
    """The operators that took the most self CPU time in one forward pass (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fused = copy.deepcopy(model).eval().fuse(verbose=False)
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fused(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fused(x)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in ops[:top]]


# ---- report -------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    s = result["settings"]
    out = [f"## Latency vs GFLOPs: {s['model']} at {s['imgsz']} px, batch {s['batch']}, CPU", "",
           md_machine(result["machine"]), ""]
    head = ["model", "GFLOPs", "GFLOPs ratio", "latency ms/img", "latency ratio", "latency ratio / GFLOPs ratio",
            "latency speed-up / GFLOPs speed-up", f"<= {GOAL}?"]
    for backend, run in result["backends"].items():
        out += [f"### {backend} (median of {s['repeats']} interleaved rounds after {s['warmup']} warm-up)", ""]
        out.append(md_table(head, [[r["model"], f"{r['gflops']:.2f}", f"{r['gflops_ratio']:.3f}",
                                    f"{r['latency_ms']:.1f}", f"{r['latency_ratio']:.3f}",
                                    f"{r['latency_over_gflops']:.3f}", f"{r['speedup_efficiency']:.3f}",
                                    ("yes" if r["meets_goal"] else "no") if i else "(reference)"]
                                   for i, r in enumerate(run["rows"])]))
        out.append("")
    for backend, error in result.get("errors", {}).items():
        out += [f"### {backend}: not timed", "", error, ""]
    for label, prof in result["profiles"].items():
        out += [f"### Where the time goes: base vs {label} (torch, one batch, forward hooks)", ""]
        rows = []
        for region, b in prof["base"]["regions"].items():
            p = prof["pruned"]["regions"][region]
            rows.append([region, f"{b['gflops']:.1f}", f"{p['gflops']:.1f}", _x(b["gflops"], p["gflops"]),
                         f"{b['ms']:.0f}", f"{p['ms']:.0f}", _x(b["ms"], p["ms"]),
                         f"{b['ms'] / prof['base']['ms']:.0%}", f"{p['ms'] / prof['pruned']['ms']:.0%}"])
        out.append(md_table(["region", "GFLOPs base", "GFLOPs pruned", "GFLOPs speed-up", "ms/batch base",
                             "ms/batch pruned", "time speed-up", "share base", "share pruned"], rows))
        if "onnxruntime" in prof:
            out += ["", f"ONNX Runtime, per region (its node profile, one batch), base vs {label}:", ""]
            b_ms, p_ms = prof["onnxruntime"]["base"], prof["onnxruntime"]["pruned"]
            b_total, p_total = sum(v["ms"] for v in b_ms.values()), sum(v["ms"] for v in p_ms.values())
            out.append(md_table(["region", "ms/batch base", "ms/batch pruned", "time speed-up", "share base",
                                 "share pruned"],
                                [[r, f"{b_ms[r]['ms']:.0f}", f"{p_ms[r]['ms']:.0f}", _x(b_ms[r]["ms"], p_ms[r]["ms"]),
                                  f"{b_ms[r]['ms'] / b_total:.0%}", f"{p_ms[r]['ms'] / p_total:.0%}"] for r in b_ms]))
            speedup = prof["base"]["gflops"] / prof["pruned"]["gflops"]
            out += ["", f"ONNX Runtime, per operator type (summed over regions), base vs {label}; the last column is "
                    f"the time beyond what the GFLOPs speed-up ({speedup:.2f}x) would leave:", ""]
            out.append(md_table(["op type", "ms/batch base", "ms/batch pruned", "time speed-up", "share pruned",
                                 "ms beyond GFLOPs"], ort_op_rows(b_ms, p_ms, speedup)))
        out += ["", f"Top operators by self CPU time (torch.profiler), base | {label}:", ""]
        ops = zip(prof["base"]["ops"], prof["pruned"]["ops"])
        out.append(md_table(["base op", "ms", "share", f"{label} op", "ms", "share"],
                            [[a["op"], f"{a['ms']:.0f}", f"{a['share']:.0%}", b["op"], f"{b['ms']:.0f}",
                              f"{b['share']:.0%}"] for a, b in ops]))
        out.append("")
    return "\n".join(out)


def _x(base: float, pruned: float) -> str:
    return f"{base / pruned:.2f}x" if pruned else "-"


def headline(result: dict) -> str:
    parts = []
    for backend, run in result["backends"].items():
        cells = [f"{r['model']} {r['latency_over_gflops']:.2f}" for r in run["rows"][1:]]
        parts.append(f"{backend}: " + ", ".join(cells))
    s = result["settings"]
    return (f"latency ratio / GFLOPs ratio (goal <= {GOAL}; {s['model']} @{s['imgsz']}, batch {s['batch']}, CPU) "
            + "; ".join(parts))


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(None)  # for pruning and profiles; each timing run sets its own
    info = machine()
    models = pruned_models(args)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "backends": {}, "errors": {}, "profiles": {}}
    for threads in [int(t) for t in args.threads.split(",")] if args.threads else [set_threads(None)]:
        for backend in filter(None, args.backends.split(",")):
            key = f"{backend}, {threads} thread{'s' if threads > 1 else ''}"
            try:
                run = bench(models, batch=args.batch, imgsz=args.imgsz, backend=backend, warmup=args.warmup,
                            repeats=args.repeats, threads=threads, atol=args.atol)
            except UserError as e:  # e.g. an ONNX export that does not match PyTorch: recorded, shown, not timed
                print(f"{key}: not timed: {e}", flush=True)
                result["errors"][key] = str(e)
                continue
            print(format_bench(run), flush=True)
            result["backends"][key] = {"bench": run, "rows": [derived(r) for r in run["rows"]]}
            write_results(args.out, "latency_vs_flops", result, markdown(result))  # keep what is done so far
    set_threads(None)  # bench restores the thread count it found; be explicit
    for label in filter(None, (x.strip() for x in args.profile.split(","))):
        result["profiles"][label] = {
            name: {"regions": (reg := region_profile(m, args.imgsz, args.batch)),
                   "ms": sum(r["ms"] for r in reg.values()), "gflops": sum(r["gflops"] for r in reg.values()),
                   "ops": op_profile(m, args.imgsz, args.batch)}
            for name, m in (("base", models["base"]), ("pruned", models[label]))}
        if "onnxruntime" in args.backends:
            threads = set_threads(None)
            result["profiles"][label]["onnxruntime"] = {
                name: ort_region_profile(m, args.imgsz, args.batch, threads)
                for name, m in (("base", models["base"]), ("pruned", models[label]))}
    result["headline"] = headline(result)
    write_results(args.out, "latency_vs_flops", result, markdown(result))
    print(result["headline"])
    return result


if __name__ == "__main__":
    main()
