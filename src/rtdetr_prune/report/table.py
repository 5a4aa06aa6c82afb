"""Markdown result tables in the format of the project's published experiments.

Cells follow the seed README's tables, which users paste into papers: params with thousands
separators, GFLOPs with one decimal, mAP with three, and for non-baseline rows the share of the
baseline in parentheses (``13,458,528 (67.7%)``) or the signed mAP change (``0.356 (-0.021)``).
A value that was not measured (null) prints as ``-``.
"""

from __future__ import annotations

from rtdetr_prune.report.io import validate_report

MISSING = "-"
HEADER = ("model", "Params", "GFLOPs", "Model Size (MB)", "mAP50", "mAP50-95",
          "Inference Time (bs 8, ms/img)")
STAGES = (("baseline", "Baseline"), ("pruned", "Pruned"), ("finetuned", "Finetuned"))


def percent_of(value, base) -> str:
    """Return ``value`` as a share of ``base``, like ``"67.7%"``, or "" when it is undefined."""
    if value is None or base is None or base == 0:
        return ""
    return f"{100.0 * value / base:.1f}%"


def map_delta(value, base) -> str:
    """Return the signed change of a mAP, like ``"-0.021"`` or ``"+0.000"``, or "" when undefined.

    The change is taken between the three-decimal values the table prints, so that a reader who
    subtracts the printed numbers gets the printed change.
    """
    if value is None or base is None:
        return ""
    delta = round(round(value, 3) - round(base, 3), 3)
    return f"{delta + 0.0:+.3f}"  # + 0.0 turns -0.0 into 0.0, so no change prints as +0.000


def _with_note(text: str, note: str) -> str:
    return f"{text} ({note})" if note else text


def stage_cells(stage: dict, base: dict | None = None) -> list[str]:
    """Format one stage's six measurements as table cells.

    Args:
        stage: A stage dict (params, gflops, size_mb, map50, map50_95, latency_ms).
        base: The baseline stage to compare with, or None for the baseline row itself.

    Returns:
        Six strings, in the order of ``HEADER[1:]``.

    Example:
        >>> stage_cells({"params": 13458528, "gflops": 36.6, "size_mb": None, "map50": 0.356,
        ...              "map50_95": None, "latency_ms": 2.47},
        ...             {"params": 19884600, "gflops": 57.0, "size_mb": 76.1, "map50": 0.377,
        ...              "map50_95": 0.219, "latency_ms": 3.05})
        ['13,458,528 (67.7%)', '36.6 (64.2%)', '-', '0.356 (-0.021)', '-', '2.47 (81.0%)']
    """
    formats = {"params": lambda v: f"{int(round(v)):,}", "gflops": _gflops_cell,
               "size_mb": lambda v: f"{v:.1f}", "map50": lambda v: f"{v:.3f}",
               "map50_95": lambda v: f"{v:.3f}", "latency_ms": lambda v: f"{v:.2f}"}
    cells = []
    for key, fmt in formats.items():
        value = stage.get(key)
        if value is None:
            cells.append(MISSING)
            continue
        if base is None:
            note = ""
        elif key.startswith("map"):
            note = map_delta(value, base.get(key))
        else:
            note = percent_of(value, base.get(key))
        cells.append(_with_note(fmt(value), note))
    return cells


def escape_cell(text: str) -> str:
    """Escape characters that would break a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header, rows) -> str:
    """Render a header and rows of cells as a markdown table in the seed's style (no trailing newline)."""
    lines = ["| " + " | ".join(escape_cell(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def caption(report: dict) -> str:
    """One line naming the method and the target and achieved speed-up."""
    steps = report.get("steps")
    in_steps = f" in {steps} pruning step{'s' if steps != 1 else ''}" if isinstance(steps, int) else ""
    return (f"Method {report['method']}: target speed-up {report['speed_up_target']:.2f}x, "
            f"achieved {report['speed_up_achieved']:.2f}x{in_steps}.")


def stage_table(report: dict) -> str:
    """Render a run's baseline, pruned and finetuned results as a captioned markdown table.

    Non-baseline rows show each size and speed measurement as a share of the baseline and each
    mAP as a signed change from it. The Finetuned row is left out when the run was not finetuned.

    Args:
        report: A report dict as stored in a run's report.json.

    Returns:
        The caption line, a blank line and the table, without a trailing newline.

    Raises:
        UserError: When the report lacks keys the table needs.

    Example:
        >>> print(stage_table(load_report("runs/prune/exp1")))  # doctest: +SKIP
        Method lamp: target speed-up 1.50x, achieved 1.56x in 12 pruning steps.
        <BLANKLINE>
        | model | Params | GFLOPs | ...
    """
    validate_report(report)
    base = report["baseline"]
    rows = []
    for key, label in STAGES:
        if report.get(key) is not None:
            rows.append([label] + stage_cells(report[key], None if key == "baseline" else base))
    return caption(report) + "\n\n" + markdown_table(HEADER, rows)


def _gflops_cell(v: float) -> str:
    """One decimal as papers print GFLOPs (57.0); more for small models, so 0.138 does not print as 0.1."""
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"
