"""ONNX Runtime session options against the latency ratio: is the time a pruned model keeps a runtime setting?

Prunes the model as ``latency_vs_flops.py`` does, exports the base and each pruned model once, and times them
in ONNX Runtime on CPU under each variant of the session options, the models interleaved within a variant and
the variants run in turn (``--passes`` times), so a ratio that a setting changes stands out from the drift:

- ``default``: the benchmark's own settings (sequential, idle threads block instead of spinning);
- ``spin``: idle intra-op threads spin (ONNX Runtime's own default);
- ``no-arena``: the CPU memory arena off;
- ``no-mem-pattern``: memory pattern planning off.

Example (docs/benchmarks.md, 2b; 3-4 minutes on 2 cores)::

    python benchmarks/ort_session_options.py --targets 3 --out benchmarks/results/ort_session_options
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")

import torch  # noqa: E402

from rtdetr_prune.bench import onnx as bench_onnx  # noqa: E402
from rtdetr_prune.bench.timing import interleaved, summarize  # noqa: E402
from rtdetr_prune.measure import counts  # noqa: E402
from rtdetr_prune.models import family_of  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import latency_vs_flops  # noqa: E402
from _common import machine, md_machine, md_table, set_threads, write_results  # noqa: E402


def _spin(o):
    o.add_session_config_entry("session.intra_op.allow_spinning", "1")


def _no_arena(o):
    o.enable_cpu_mem_arena = False


def _no_mem_pattern(o):
    o.enable_mem_pattern = False


VARIANTS = {"default": None, "spin": _spin, "no-arena": _no_arena, "no-mem-pattern": _no_mem_pattern}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Every other option is latency_vs_flops.py's (--model, --methods, --targets, "
                                "--batch, --warmup, --repeats, --out, ...).")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--passes", type=int, default=2, help="times each variant is timed, in turn")
    args, rest = p.parse_known_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if args.passes < 1:
        p.error(f"--passes {args.passes}: give at least 1")
    args.prune = latency_vs_flops.parse_args(rest)  # model, methods, targets, batch, warmup, repeats, out, ...
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    a = args.prune
    threads = set_threads(None)
    models = latency_vs_flops.pruned_models(a)
    gflops = {k: counts.params_and_gflops(m, a.imgsz)[1] for k, m in models.items()}
    x = torch.rand(a.batch, 3, a.imgsz, a.imgsz, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtdetr-ort-options-") as tmp:
        paths = {}
        for i, (label, model) in enumerate(models.items()):
            fused = counts.fused(model)
            paths[label] = bench_onnx.export(family_of(fused).export_module(fused), x, Path(tmp) / f"{i}.onnx")
        for n in range(args.passes):
            for variant in args.variants:
                sessions = [bench_onnx.session(p, torch.device("cpu"), threads, configure=VARIANTS[variant])
                            for p in paths.values()]
                runners = [bench_onnx.ort_runner(s, x) for s in sessions]
                timed = summarize(interleaved(runners, a.warmup, a.repeats), a.batch)
                for label, t in zip(paths, timed):
                    gratio = gflops[label] / gflops["base"]
                    rows.append({"pass": n + 1, "variant": variant, "model": label, **t, "gflops_ratio": gratio,
                                 "latency_over_gflops": t["latency_ratio"] / gratio})
                print(f"pass {n + 1}, {variant}: " + ", ".join(f"{r['model']} {r['latency_over_gflops']:.3f}"
                                                            for r in rows[-len(paths) + 1:]), flush=True)
                del sessions, runners
    settings = {k: v for k, v in vars(a).items() if k != "out"} | {"variants": args.variants, "passes": args.passes}
    result = {"settings": settings, "machine": machine(), "threads": threads, "rows": rows}
    write_results(a.out, "ort_session_options", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    s = result["settings"]
    table = md_table(["pass", "variant", "model", "latency ms/img", "latency ratio", "GFLOPs ratio",
                      "latency ratio / GFLOPs ratio"],
                     [[r["pass"], r["variant"], r["model"], f"{r['latency_ms']:.1f}", f"{r['latency_ratio']:.3f}",
                       f"{r['gflops_ratio']:.3f}", f"{r['latency_over_gflops']:.3f}"] for r in result["rows"]])
    return "\n".join([
        "## ONNX Runtime session options against the latency ratio", "", md_machine(result["machine"]), "",
        f"{s['model']}, {s['imgsz']} px, batch {s['batch']}, {result['threads']} intra-op threads; per variant the "
        f"models interleaved, median of {s['repeats']} rounds after {s['warmup']} untimed; variants in turn, "
        f"{s['passes']} passes.", "", table, ""])


if __name__ == "__main__":
    main()
