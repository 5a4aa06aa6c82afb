"""Reports for pruning runs: a run's report.md and curve.png, and a table comparing runs.

This is the module to import; the work is split by concern:

- ``report_io``: reading and validating report.json, atomic file writes.
- ``report_table``: cell formats and the per-run stage table (``stage_table``).
- ``report_plot``: history.csv and the pruning curve (``plot_curve``).
- ``report_compare``: several runs in one table (``compare_runs``, ``write_compare``).

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

__all__ = ["compare_runs", "load_report", "plot_curve", "read_history", "report_markdown",
           "stage_table", "validate_report", "write_compare", "write_report_md"]


def skipped_section(report: dict) -> str:
    """Markdown list of the layers the pruner left alone and why, or "" when none were skipped."""
    skipped = report.get("skipped") or []
    if not skipped:
        return ""
    items = [f"- `{s.get('layer', '?')}`: {escape_cell(s.get('reason', 'no reason given'))}"
             for s in skipped]
    return "## Skipped layers\n\n" + "\n".join(items)


def report_markdown(report: dict, curve: str | None = "curve.png") -> str:
    """Assemble a run's report.md text: title, stage table, skipped layers and the curve.

    Args:
        report: A report dict as stored in report.json.
        curve: File name of the pruning curve next to report.md, or None when there is none.

    Returns:
        The markdown text, ending in a newline.

    Example:
        >>> print(report_markdown(load_report("runs/prune/exp1")))  # doctest: +SKIP
    """
    parts = [f"# Pruning report: {report['method']}", stage_table(report)]
    skipped = skipped_section(report)
    if skipped:
        parts.append(skipped)
    if curve:
        parts.append(f"Pruning curve (params, GFLOPs and speed-up per step): [{curve}]({curve})\n\n"
                     f"![Pruning curve]({curve})")
    else:
        parts.append("No history.csv in this run, so there is no pruning curve.")
    return "\n\n".join(parts) + "\n"


def write_report_md(run_dir) -> Path:
    """Write ``run_dir/report.md`` from its report.json, drawing curve.png from history.csv first.

    Both files are written atomically. When the run has no history.csv, report.md says so instead
    of linking a missing image.

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
    return write_text(run_dir / "report.md", report_markdown(report, curve))
