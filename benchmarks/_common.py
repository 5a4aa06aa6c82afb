"""Helpers shared by the benchmark scripts: the machine record, result files, tables, threads, data.

Every script records where and how it ran (CPU, cores, threads, library versions, date) next to its
numbers, writes ``<name>.json`` and ``<name>.md`` into its output folder, and prints its headline last.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def set_threads(n: int | None) -> int:
    """Use ``n`` PyTorch intra-op threads (default: the physical cores this process may use)."""
    from rtdetr_prune.bench.timing import physical_cores

    n = n or physical_cores()
    torch.set_num_threads(n)
    return n


def machine() -> dict:
    """Where the numbers come from: CPU model, cores, GPU, thread settings, library versions, date (UTC)."""
    from importlib.metadata import PackageNotFoundError, version

    from rtdetr_prune.bench.timing import physical_cores

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {p: ver(p) for p in ("torch", "ultralytics", "torch-pruning", "onnxruntime", "rtdetr-prune")},
    }


def _cpu_model() -> str:
    """``model name`` (plus family/model numbers: a VM may hide the marketing name) from /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    name = fields.get("model name", platform.processor() or "unknown")
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"



def model_args(p, batch: int | None = 8) -> None:
    """Add the model flags the timing benchmarks share: --model, --nc, --imgsz, and --batch unless ``batch`` is None."""
    p.add_argument("--model", default="rtdetr-r18", help="zoo name or checkpoint")
    p.add_argument("--nc", type=int, default=10, help="classes of a model built from a zoo name")
    p.add_argument("--imgsz", type=int, default=640, help="image side in pixels")
    if batch is not None:
        p.add_argument("--batch", type=int, default=batch, help="images per timed forward pass")

def md_table(head: list[str], rows: list[list]) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def md_machine(m: dict) -> str:
    """One line describing the machine, for the top of each markdown result."""
    v = m["versions"]
    return (f"{m['date_utc']} UTC; {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} usable cores), "
            f"GPU: {m['gpu'] or 'none'}; torch {v['torch']} ({m['torch_threads']} threads), ultralytics "
            f"{v['ultralytics']}, torch-pruning {v['torch-pruning']}, onnxruntime {v['onnxruntime']}")


def write_results(out: str | Path, name: str, result: dict, markdown: str) -> Path:
    """Write ``out/name.json`` and ``out/name.md``; return the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown.rstrip() + "\n")
    return out


def synthetic_data(folder: str | Path, imgsz: int, images: int, nc: int | None = None) -> str:
    """The synthetic shapes set at ``imgsz`` (the first ``nc`` of its five shapes, all five by default;
    class ids then stay below the model's class count); its data YAML path. Rewritten each call."""
    from rtdetr_prune.data import SHAPES, make_synthetic

    names = tuple(SHAPES)[: min(nc or len(SHAPES), len(SHAPES))]
    return str(make_synthetic(folder, images=images, imgsz=imgsz, seed=0, names=names))
