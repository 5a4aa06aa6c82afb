"""One table comparing several pruning runs, as in the seed README's experiment tables.

Each run contributes its best available final stage: finetuned if it was finetuned, else pruned.
Percentages and mAP changes are always relative to the run's own baseline.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import write_text
from rtdetr_prune.report.io import load_report
from rtdetr_prune.report.table import MISSING, map_delta, markdown_table, percent_of, stage_cells

COMPARE_HEADER = ("run", "method", "stage", "Params", "GFLOPs", "Model Size (MB)", "mAP50",
                  "mAP50-95", "Inference Time (bs 8, ms/img)")
CSV_COLUMNS = ("run", "method", "stage", "params", "params_pct", "gflops", "gflops_pct",
               "size_mb", "size_pct", "map50", "map50_delta", "map50_95", "map50_95_delta",
               "latency_ms", "latency_pct")
# A shared Baseline row is only honest when every run's baseline prints the same numbers.
# Latency is left out on purpose: it is re-measured per run and jitters.
_BASELINE_IDENTITY = (("params", 0), ("gflops", 1), ("map50", 3), ("map50_95", 3))


def final_stage(report: dict) -> str:
    """Return the key of the run's best available final stage: "finetuned" if present, else "pruned"."""
    return "finetuned" if report.get("finetuned") is not None else "pruned"


def run_names(run_dirs) -> list[str]:
    """Name runs by directory name, or by parent/name where two runs share a directory name."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name
            for p in paths]


def _baseline_key(base: dict) -> tuple:
    return tuple(None if base.get(k) is None else round(base[k], nd) for k, nd in _BASELINE_IDENTITY)


def _csv_row(entry: tuple) -> dict:
    name, method, stage, values, base = entry
    row = {"run": name, "method": method, "stage": stage}
    for key, extra, derive in (("params", "params_pct", percent_of), ("gflops", "gflops_pct", percent_of),
                               ("size_mb", "size_pct", percent_of), ("map50", "map50_delta", map_delta),
                               ("map50_95", "map50_95_delta", map_delta),
                               ("latency_ms", "latency_pct", percent_of)):
        value = values.get(key)
        row[key] = "" if value is None else value
        row[extra] = "" if base is None else derive(value, base.get(key)).rstrip("%")
    return row


def compare_entries(reports, names) -> tuple[list[tuple], bool]:
    """List the comparison rows and say whether the runs share one baseline.

    Args:
        reports: Validated report dicts, in display order.
        names: One display name per report.

    Returns:
        ``(entries, shared)``. Each entry is ``(name, method, stage, values, base)`` where
        ``values`` is a stage dict and ``base`` the baseline it is compared with (None on baseline
        rows). ``shared`` is True when a single Baseline row, from the first run, heads the table.
    """
    shared = len({_baseline_key(r["baseline"]) for r in reports}) == 1
    entries = []
    if shared:
        entries.append(("Baseline", MISSING, "baseline", reports[0]["baseline"], None))
    for name, report in zip(names, reports):
        base = report["baseline"]
        if not shared:
            entries.append((f"{name} baseline", report["method"], "baseline", base, None))
        stage = final_stage(report)
        entries.append((name, report["method"], stage, report[stage], base))
    return entries, shared


def compare_runs(run_dirs) -> tuple[str, str]:
    """Compare pruning runs in one markdown table and the same rows as CSV.

    One row per run, using its finetuned results if it was finetuned and its pruned results
    otherwise, after one Baseline row taken from the first run. When the runs' baselines differ
    (different params, GFLOPs or mAP), each run is preceded by its own baseline row instead and a
    note under the table says so. Shares and mAP changes are relative to each run's own baseline.

    Args:
        run_dirs: Pruning run directories, each holding a report.json; rows keep this order.

    Returns:
        ``(markdown, csv_text)``. The CSV has columns ``CSV_COLUMNS`` with raw (unrounded) values,
        percentages without the % sign, and empty fields for values that were not measured.

    Raises:
        UserError: When no directory is given, or one has no valid report.json.

    Example:
        >>> md, csv_text = compare_runs(["runs/prune/exp1", "runs/prune/exp2"])  # doctest: +SKIP
    """
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UserError("compare needs at least one run directory.")
    reports = [load_report(d) for d in run_dirs]
    entries, shared = compare_entries(reports, run_names(run_dirs))

    markdown = markdown_table(COMPARE_HEADER, [[name, method, stage] + stage_cells(values, base)
                                               for name, method, stage, values, base in entries])
    if not shared:
        markdown += ("\n\nNote: these runs start from different baselines, so each run follows its "
                     "own baseline row, and its percentages and mAP changes are relative to it.")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_row(e) for e in entries)
    return markdown, buf.getvalue()


def write_compare(run_dirs, out_dir=None) -> str:
    """Write compare.md and compare.csv for the given runs and return the markdown.

    Args:
        run_dirs: Pruning run directories, as for ``compare_runs``.
        out_dir: Directory for the two files; defaults to the current directory.

    Returns:
        The markdown table (with its note, if any).

    Raises:
        UserError: As ``compare_runs``.

    Example:
        >>> print(write_compare(["runs/prune/exp1", "runs/prune/exp2"], "runs/compare"))  # doctest: +SKIP
    """
    markdown, csv_text = compare_runs(run_dirs)
    out = Path(out_dir) if out_dir is not None else Path.cwd()
    write_text(out / "compare.md", markdown + "\n")
    write_text(out / "compare.csv", csv_text)
    return markdown
