"""The pruning curve: params, GFLOPs and speed-up after each pruning step.

Drawn with matplotlib's object API on an Agg canvas, so it never opens a window, needs no display
and does not touch pyplot's global state (safe inside training processes and tests).
"""

from __future__ import annotations

import csv
from pathlib import Path

from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import atomic_path

HISTORY_COLUMNS = ("step", "params", "gflops", "speed_up")


def read_history(history_csv) -> dict[str, list[float]]:
    """Read a run's history.csv into one list per column.

    Args:
        history_csv: Path to a CSV with header ``step,params,gflops,speed_up`` (extra columns are
            ignored); step 0 is the unpruned baseline.

    Returns:
        ``{"step": [...], "params": [...], "gflops": [...], "speed_up": [...]}``, rows sorted by step.

    Raises:
        UserError: When the file is missing, lacks a column, has no rows or a non-numeric value.

    Example:
        >>> read_history("runs/prune/exp1/history.csv")["speed_up"][:2]  # doctest: +SKIP
        [1.0, 1.08]
    """
    path = Path(history_csv)
    if not path.is_file():
        raise UserError(f"{path}: no such file; the prune step writes history.csv into the run directory.")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in HISTORY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected header "
                            f"{','.join(HISTORY_COLUMNS)}.")
        try:
            rows = [{c: float(row[c]) for c in HISTORY_COLUMNS} for row in reader]
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: line {reader.line_num}: non-numeric value ({e}).") from e
    if not rows:
        raise UserError(f"{path}: has a header but no rows; nothing to plot.")
    rows.sort(key=lambda r: r["step"])
    return {c: [r[c] for r in rows] for c in HISTORY_COLUMNS}


def plot_curve(history_csv, out_png, title: str = "Pruning curve") -> Path:
    """Plot params (millions), GFLOPs and speed-up against the pruning step and save a PNG.

    The top panel shows params (left axis) and GFLOPs (right axis); the bottom panel shows the
    speed-up column as recorded, with a dotted line at 1x. The file is written atomically.

    Args:
        history_csv: Path to the run's history.csv.
        out_png: Where to write the image.
        title: Figure title, e.g. the method and run name.

    Returns:
        ``out_png`` as a Path.

    Raises:
        UserError: When history.csv is missing or malformed.

    Example:
        >>> plot_curve("runs/prune/exp1/history.csv", "runs/prune/exp1/curve.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    h = read_history(history_csv)
    steps = h["step"]
    fig = Figure(figsize=(7, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)

    params_line, = top.plot(steps, [p / 1e6 for p in h["params"]], "o-", color="tab:blue",
                            label="Params (M)")
    top.set_ylabel("Params (M)", color="tab:blue")
    right = top.twinx()
    gflops_line, = right.plot(steps, h["gflops"], "s--", color="tab:orange", label="GFLOPs")
    right.set_ylabel("GFLOPs", color="tab:orange")
    top.legend(handles=[params_line, gflops_line], loc="upper right")
    top.grid(True, alpha=0.3)

    bottom.plot(steps, h["speed_up"], "^-", color="tab:green")
    bottom.axhline(1.0, color="grey", lw=0.8, ls=":")
    bottom.set_ylabel("Speed-up (x)")
    bottom.set_xlabel("Pruning step (0 = baseline)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(True, alpha=0.3)

    fig.suptitle(title)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)
