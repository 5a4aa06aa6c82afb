"""GPU latency: rtdetr-r18 at 640 px, batch 8, baseline vs pruned 1.5x and 2x, fp32 and fp16, on CUDA.

The models are pruned on the CPU with the engine's defaults (10 classes, random weights, seed 0; or
--model a checkpoint), then timed with :func:`rtdetr_prune.bench.latency.bench` on the GPU, interleaved, once
in fp32 and once in fp16 (``half=True``). Exits with a clear message when PyTorch sees no CUDA GPU.

Usage (on a machine with an NVIDIA GPU):
    python benchmarks/gpu_latency.py
    python benchmarks/gpu_latency.py --methods lamp,group_norm --targets 1.5,2,3 --repeats 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")

import torch  # noqa: E402

from rtdetr_prune.bench.latency import bench, format_bench  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.pruning.analysis.prunable import analyse  # noqa: E402
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target  # noqa: E402
from rtdetr_prune.pruning.methods import get_method  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import (RESULTS, machine, md_machine, md_table, model_args, set_threads,  # noqa: E402
                     write_results)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_args(p)
    p.add_argument("--methods", default="lamp")
    p.add_argument("--targets", default="1.5,2")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--warmup", type=int, default=20, help="untimed rounds (cuDNN autotune, lazy init)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def require_gpu(device: str) -> None:
    """Exit (status 2) with a message when PyTorch sees no CUDA GPU."""
    if not torch.cuda.is_available():
        print(f"gpu_latency.py needs a CUDA GPU, and PyTorch sees no CUDA GPU here (torch {torch.__version__}, "
              f"CUDA build: {torch.version.cuda or 'none'}). Run it on a machine with an NVIDIA GPU and a CUDA "
              "build of PyTorch; for CPU numbers use benchmarks/latency_vs_flops.py.", file=sys.stderr)
        raise SystemExit(2)
    torch.device(device)  # a malformed device string fails here, before any work


def models(args) -> dict:
    torch.manual_seed(0)
    base = load_model(args.model, nc=args.nc)
    plan = analyse(base, PruneOptions.round_to)  # what may be pruned at the engine's default unit
    out = {"base": base}
    for name in args.methods.split(","):
        for target in args.targets.split(","):
            t0 = time.perf_counter()
            result = prune_to_target(base, get_method(name), PruneOptions(speed_up=float(target), imgsz=args.imgsz),
                                     plan=plan)
            out[f"{name} {float(target):g}x"] = result.model
            print(f"{name} {target}x: {result.message} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    out = [f"## GPU latency: {s['model']} at {s['imgsz']} px, batch {s['batch']}, {result['gpu']}", "",
           md_machine(result["machine"]), ""]
    for precision, run in result["runs"].items():
        out += [f"### {precision} (median of {s['repeats']} interleaved rounds after {s['warmup']} warm-up)", ""]
        out.append(md_table(["model", "GFLOPs", "GFLOPs ratio", "latency ms/img", "latency ratio",
                             "latency ratio / GFLOPs ratio"],
                            [[r["model"], f"{r['gflops']:.2f}", f"{r['gflops_ratio']:.3f}", f"{r['latency_ms']:.3f}",
                              f"{r['latency_ratio']:.3f}", f"{r['latency_ratio'] / r['gflops_ratio']:.3f}"]
                             for r in run["rows"]]))
        out.append("")
    return "\n".join(out)


def headline(result: dict) -> str:
    parts = []
    for precision, run in result["runs"].items():
        base = run["rows"][0]["latency_ms"]
        cells = [f"{r['model']} {r['latency_ms']:.2f} ms/img ({r['latency_ratio'] / r['gflops_ratio']:.2f})"
                 for r in run["rows"][1:]]
        parts.append(f"{precision}: base {base:.2f} ms/img, " + ", ".join(cells))
    return (f"GPU latency ({result['gpu']}, batch {result['settings']['batch']}, {result['settings']['imgsz']} px; "
            "in brackets latency ratio / GFLOPs ratio) " + "; ".join(parts))


def main(argv=None) -> dict:
    args = parse_args(argv)
    require_gpu(args.device)
    set_threads(None)
    info = machine()
    timed = models(args)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": info,
              "gpu": torch.cuda.get_device_name(torch.device(args.device)), "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version(), "runs": {}}
    for precision, half in (("fp32", False), ("fp16", True)):
        run = bench(timed, batch=args.batch, imgsz=args.imgsz, device=args.device, half=half, warmup=args.warmup,
                    repeats=args.repeats)
        print(format_bench(run), flush=True)
        result["runs"][precision] = run
    result["headline"] = headline(result)
    write_results(args.out, "gpu_latency", result, markdown(result))
    print(result["headline"])
    return result


if __name__ == "__main__":
    main()
