"""Each layer group's width before and after pruning: widths.csv, drawn as widths.png.

The pipeline writes ``widths.csv`` (``group,original,pruned``: a group is named by its root layer, as
``check`` names it; widths in channels) when it prunes. The chart shows one horizontal bar per group, in
network order, the original width pale and the pruned width dark, with the share kept written next to it,
so where pruning cut (and where it could not) shows at a glance.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rtdetr_prune.errors import UserError
from rtdetr_prune.io.files import atomic_path

WIDTH_COLUMNS = ("group", "original", "pruned")


def read_widths(widths_csv) -> list[tuple[str, int, int]]:
    """(group, original channels, pruned channels) per row of a run's widths.csv, in file order.

    Raises:
        UserError: the file is missing, lacks a column, has no rows or a non-integer width.
    """
    path = Path(widths_csv)
    if not path.is_file():
        raise UserError(f"{path}: no such file; the prune step writes widths.csv into the run directory.")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in WIDTH_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected header {','.join(WIDTH_COLUMNS)}.")
        try:
            rows = [(r["group"], int(r["original"]), int(r["pruned"])) for r in reader]
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: line {reader.line_num}: widths must be whole numbers ({e}).") from e
    if not rows:
        raise UserError(f"{path}: has a header but no rows; nothing to draw.")
    return rows


def plot_widths(widths_csv, out_png, title: str = "Channel widths before and after pruning") -> Path:
    """Draw widths.csv as a horizontal bar chart (original pale, pruned dark, share kept as text); save a PNG.

    Args:
        widths_csv: a run's widths.csv.
        out_png: where to write the image (atomically).
        title: figure title, e.g. the method and run name.

    Returns:
        ``out_png`` as a Path.

    Example:
        >>> plot_widths("runs/prune/exp/widths.csv", "runs/prune/exp/widths.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_widths(widths_csv)
    names = [g for g, _, _ in rows]
    ys = list(range(len(rows)))[::-1]  # first group at the top
    fig = Figure(figsize=(8, 1.2 + 0.22 * len(rows)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.barh(ys, [o for _, o, _ in rows], color="tab:blue", alpha=0.25, label="original")
    ax.barh(ys, [p for _, _, p in rows], color="tab:blue", label="pruned")
    for y, (_, o, p) in zip(ys, rows):
        ax.text(max(o, 1) * 1.01, y, f"{p}/{o} ({p / o:.0%})" if o else "0/0", va="center", fontsize=7)
    ax.set_yticks(ys, names, fontsize=7)
    ax.set_xlabel("output channels")
    ax.set_xlim(0, max(o for _, o, _ in rows) * 1.25 or 1)
    kept = sum(p for _, _, p in rows) / max(sum(o for _, o, _ in rows), 1)
    ax.set_title(f"{title}\n{len(rows)} groups, {kept:.0%} of their channels kept", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)
