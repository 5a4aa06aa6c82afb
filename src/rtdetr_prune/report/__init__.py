"""Reports for pruning runs: a run's report.md and curve.png, and a table comparing runs.

This is the module to import; the work is split by concern:

- ``report_io``: reading and validating report.json, atomic file writes.
- ``report_table``: cell formats and the per-run stage table (``stage_table``).
- ``report_plot``: history.csv and the pruning curve (``plot_curve``).
- ``report_compare``: several runs in one table (``compare_runs``, ``write_compare``).
- ``report_widths``: each layer group's width before and after pruning (``plot_widths``).

Usage:
    write_report_md("runs/prune/exp1")        # -> report.md (+ curve.png from history.csv)
    write_compare(["runs/prune/exp1", "runs/prune/exp2"], "runs/compare")
"""

from __future__ import annotations

from pathlib import Path

from rtdetr_prune.io.files import write_text
from rtdetr_prune.report.compare import compare_runs, write_compare
from rtdetr_prune.report.io import load_report, validate_report
from rtdetr_prune.report.plot import plot_curve, read_history
from rtdetr_prune.report.table import escape_cell, stage_table
from rtdetr_prune.report.widths import plot_widths, read_widths

__all__ = ["compare_runs", "load_report", "plot_curve", "plot_widths", "read_history", "read_widths",
           "report_markdown", "stage_table", "validate_report", "write_compare", "write_report_md"]


def skipped_section(report: dict) -> str:
    """Markdown list of the layers the pruner left alone and why, or "" when none were skipped."""
    skipped = report.get("skipped") or []
    if not skipped:
        return ""
    items = [f"- `{s.get('layer', '?')}`: {escape_cell(s.get('reason', 'no reason given'))}"
             for s in skipped]
    return "## Skipped layers\n\n" + "\n".join(items)


def rounds_section(report: dict) -> str:
    """Markdown table of an iterative schedule's rounds (target, epochs, speed-up, mAP50-95 before and after
    each round's finetune), or "" for a one-shot run."""
    rows = report.get("rounds") or []
    if not rows:
        return ""
    cell = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| round | target | epochs | speed-up | mAP50-95 pruned | mAP50-95 finetuned |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['round']} | {r['target']:g}x | {r['epochs']} | {r['speed_up']:.3f}x | {cell(r['pruned_map50_95'])} "
              f"| {cell(r['finetuned_map50_95'])} |" for r in rows]
    return ("## Rounds (iterative schedule)\n\nThe table above shows the last round: Pruned is the model at the "
            "target before its finetune.\n\n" + "\n".join(lines))


def report_markdown(report: dict, curve: str | None = "curve.png", widths: str | None = None) -> str:
    """Assemble a run's report.md text: title, stage table, rounds, skipped layers, the curve and the widths chart.

    Args:
        report: A report dict as stored in report.json.
        curve: File name of the pruning curve next to report.md, or None when there is none.
        widths: File name of the widths chart next to report.md, or None when there is none.

    Returns:
        The markdown text, ending in a newline.

    Example:
        >>> print(report_markdown(load_report("runs/prune/exp1")))  # doctest: +SKIP
    """
    parts = [f"# Pruning report: {report['method']}", stage_table(report)]
    if report.get("notes"):  # what the run did differently from what the method usually does
        parts.append("## Notes\n\n" + "\n".join(f"- {escape_cell(str(n))}" for n in report["notes"]))
    for section in (rounds_section(report), skipped_section(report)):
        if section:
            parts.append(section)
    if curve:
        parts.append(f"Pruning curve (params, GFLOPs and speed-up per step): [{curve}]({curve})\n\n"
                     f"![Pruning curve]({curve})")
    else:
        parts.append("No history.csv in this run, so there is no pruning curve.")
    if widths:
        parts.append(f"Each layer group's width before and after pruning: [{widths}]({widths})\n\n"
                     f"![Widths]({widths})")
    return "\n\n".join(parts) + "\n"


def write_report_md(run_dir) -> Path:
    """Write ``run_dir/report.md`` from its report.json, drawing curve.png from history.csv and widths.png
    from widths.csv first.

    The files are written atomically. When the run has no history.csv, report.md says so instead
    of linking a missing image; without widths.csv (runs from before it existed) there is no widths chart.

    Args:
        run_dir: A pruning run directory.

    Returns:
        The path of report.md.

    Raises:
        UserError: When report.json or history.csv is missing or malformed.

    Example:
        >>> write_report_md("runs/prune/exp1")  # doctest: +SKIP
        PosixPath('runs/prune/exp1/report.md')
    """
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    curve = None
    if (run_dir / "history.csv").is_file():
        plot_curve(run_dir / "history.csv", run_dir / "curve.png",
                   title=f"Pruning curve: {report['method']} ({run_dir.name})")
        curve = "curve.png"
    widths = None
    if (run_dir / "widths.csv").is_file():
        plot_widths(run_dir / "widths.csv", run_dir / "widths.png",
                    title=f"Widths: {report['method']} ({run_dir.name})")
        widths = "widths.png"
    return write_text(run_dir / "report.md", report_markdown(report, curve, widths))
