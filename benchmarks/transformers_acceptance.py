"""Issue 14's acceptance checks for the transformers family, on the real architectures (random weights).

For each model, built from its transformers config (80 classes) and measured at 640 px:

1. ``check``: prunable share of the GFLOPs, max reachable speed-up, what is skipped and why;
2. every method given prunes it to the target (1.5x for RT-DETR R18-vd, 2x for RT-DETRv2 R18-vd with lamp),
   achieved speed-up and whether it lands within 3% above the target;
3. each pruned model is saved in the safe format and loaded back: the largest difference between the two
   models' outputs (logits and boxes, two random images) and the class of what comes back;
4. transformers' own post-processing (``RTDetrImageProcessor.post_process_object_detection``, built locally)
   runs on the reloaded model's outputs;
5. ONNX export of the fused pruned model (--onnx-methods) and the largest difference from PyTorch
   (:func:`rtdetr_prune.bench.onnx.check_outputs`: projected decoder inputs always, decoder outputs where the
   query selection is not a tie).

Random weights as transformers initializes them (convs, linears and the encoder's BatchNorm scales at
N(0, 0.01)) shrink the signal at every layer: the decoder's inputs barely depend on the image and nearly every
encoder score ties. The models are therefore given PyTorch's own initialization for the convs and the
encoder's linears, BatchNorm scales in [0.5, 1.5] with small random shifts, and no bias before the encoder's
score head (``--no-liven`` skips this).
The gradient methods score channels with two batches of one random image with two random boxes.

Usage:
    python benchmarks/transformers_acceptance.py                          # both models, every method (long on CPU)
    python benchmarks/transformers_acceptance.py --models hf-rtdetr-tiny --imgsz 160 --methods lamp
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rtdetr_prune.bench import onnx as bench_onnx  # noqa: E402
from rtdetr_prune.measure import counts  # noqa: E402
from rtdetr_prune.models import family_of, load_model  # noqa: E402
from rtdetr_prune.pruning.analysis import analyse, check_model  # noqa: E402
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target  # noqa: E402
from rtdetr_prune.pruning.methods import METHODS, get_method  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, md_machine, md_table, set_threads, write_results  # noqa: E402

TARGETS = {"hf-rtdetr-r18vd": (1.5, list(METHODS)), "hf-rtdetr-v2-r18vd": (2.0, ["lamp"])}


def liven(model, seed: int = 0, imgsz: int = 256):
    """PyTorch's initialization for convs and encoder linears, BatchNorm statistics fitted to random images
    with scales in [0.5, 1.5] and small shifts, no bias before the encoder's score head (see the module docstring)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    encoder_linears = {m for m in model.model.encoder.modules() if isinstance(m, torch.nn.Linear)}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) or m in encoder_linears:
                m.reset_parameters()
        for m in norms:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative: after one batch, exactly its statistics
        model.model.enc_output[0].bias.zero_()
        model.train()(pixel_values=torch.rand(4, 3, imgsz, imgsz, generator=g))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def fake_batches(nc: int, imgsz: int, n: int = 2):
    def make():
        for i in range(n):
            g = torch.Generator().manual_seed(i)
            yield {"img": torch.rand(1, 3, imgsz, imgsz, generator=g), "batch_idx": torch.zeros(2),
                   "cls": torch.randint(0, nc, (2, 1), generator=g).float(),
                   "bboxes": torch.cat([torch.rand(2, 2, generator=g) * 0.5 + 0.25, torch.full((2, 2), 0.2)], 1)}
    return make


def reload_and_postprocess(model, imgsz: int) -> dict:
    from transformers import RTDetrImageProcessor

    with tempfile.TemporaryDirectory() as d:
        family_of(model).save_safe(model, d)
        loaded = load_model(d)
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model.eval()(pixel_values=x), loaded(pixel_values=x)
    diff = max(float((a.logits - b.logits).abs().max()), float((a.pred_boxes - b.pred_boxes).abs().max()))
    found = RTDetrImageProcessor().post_process_object_detection(b, threshold=0.0, target_sizes=[(imgsz, imgsz)] * 2)
    return {"reload_max_abs_diff": diff, "reloaded_class": type(loaded).__name__,
            "postprocess_boxes_per_image": [int(r["boxes"].shape[0]) for r in found]}


def onnx_diff(model, imgsz: int) -> dict:
    fused = counts.fused(model)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(2))
    with tempfile.TemporaryDirectory() as d:
        path = bench_onnx.export(family_of(fused).export_module(fused), x, Path(d) / "m.onnx")
        view = family_of(fused).export_module(fused)
        check = bench_onnx.check_outputs(bench_onnx.session(path, torch.device("cpu"), torch.get_num_threads()),
                                         view, x, 1e-3)
    return {"onnx_max_abs_diff": check.max_abs_diff, "onnx_tied_images": check.tied_images}


def run_model(name: str, target: float, methods: list[str], onnx_methods: set[str], imgsz: int, do_liven: bool) -> dict:
    torch.manual_seed(0)
    model = load_model(name, nc=80)
    if do_liven:
        liven(model)
    t0 = time.perf_counter()
    plan = analyse(model, 16)
    report = check_model(model, imgsz=imgsz, round_to=16, plan=plan)
    out = {"model": name, "target": target, "check_seconds": round(time.perf_counter() - t0, 1),
           "params": counts.params_and_gflops(model, imgsz)[0], "gflops": report["gflops"], "share": report["share"],
           "max_speed_up": report["max_speed_up"], "skipped": [(s["layer"], s["kind"]) for s in report["skipped"]],
           "methods": {}}
    share = report["share"]["prunable"]
    print(f"{name}: {report['gflops']} GFLOPs, prunable {share:.1%}, max {report['max_speed_up']}x", flush=True)
    for method in methods:
        t0 = time.perf_counter()
        options = PruneOptions(speed_up=target, imgsz=imgsz, grad_batches=2)
        result = prune_to_target(model, get_method(method), options, batches=fake_batches(80, imgsz), plan=plan)
        row = {"speed_up": round(result.speed_up, 4), "within_3pct": target <= result.speed_up <= target * 1.03,
               "steps": result.steps, "seconds": round(time.perf_counter() - t0, 1),
               "params": counts.params_and_gflops(result.model, imgsz)[0],
               "heads": family_of(result.model).adapter(result.model).heads(),
               **reload_and_postprocess(result.model, imgsz)}
        if method in onnx_methods:
            row.update(onnx_diff(result.model, imgsz))
        out["methods"][method] = row
        print(f"  {method}: {row}", flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(TARGETS))
    p.add_argument("--methods", default=None, help="comma-separated (default: the issue's per model)")
    p.add_argument("--onnx-methods", default="lamp", help="methods whose pruned model is also exported to ONNX")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-liven", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    set_threads(args.threads)
    results = []
    for name in args.models.split(","):
        target, methods = TARGETS.get(name, (1.5, ["lamp"]))
        methods = args.methods.split(",") if args.methods else methods
        onnx_methods = set(args.onnx_methods.split(","))
        results.append(run_model(name, target, methods, onnx_methods, args.imgsz, not args.no_liven))
    rows = [[r["model"], m, f"{r['target']:g}x", f"{v['speed_up']:.3f}x", "yes" if v["within_3pct"] else "NO",
             f"{v['reload_max_abs_diff']:.1e}", v.get("onnx_max_abs_diff", "-"), v["heads"], v["seconds"]]
            for r in results for m, v in r["methods"].items()]
    md = "\n\n".join([
        "# transformers RT-DETR: issue 14 acceptance", md_machine(machine()),
        md_table(["model", "GFLOPs", "prunable", "protected", "skipped", "max speed-up"],
                 [[r["model"], r["gflops"], f"{r['share']['prunable']:.1%}", f"{r['share']['protected']:.1%}",
                   f"{r['share']['skipped']:.1%}", f"{r['max_speed_up']}x"] for r in results]),
        md_table(["model", "method", "target", "achieved", "within 3%", "reload diff", "ONNX diff", "AIFI heads", "s"],
                 rows),
    ])
    write_results(Path(args.out), "transformers_acceptance", {"machine": machine(), "args": vars(args),
                                                               "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
