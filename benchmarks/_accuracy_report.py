"""Statistics, tables and the chart of the accuracy benchmark (benchmarks/accuracy.py).

Retention is paired: for seed ``s`` of dataset ``d``, a run's finetuned mAP50-95 divided by the control's of the
same seed (the baseline finetuned for the same total epochs with the same seed), both on the held-out test split.
An arm's score over datasets is, per seed, the mean of its datasets' retentions; the interval is the
t-distribution's 95% interval of those per-seed means (n - 1 degrees of freedom).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from scipy import stats


def mean_ci(values: list[float], level: float = 0.95) -> dict:
    """Mean and the half-width of its two-sided t confidence interval (None with fewer than two values).

    Example:
        >>> mean_ci([1.0, 2.0, 3.0])["half_width"]  # t(0.975, 2) * 1 / sqrt(3)
        2.484...
    """
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if n < 2:
        return {"mean": mean, "half_width": None, "n": n, "values": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "half_width": half, "n": n, "values": values}


def summarize(rows: list[dict], datasets: list[str]) -> list[dict]:
    """One entry per (arm, target): per dataset and over datasets (per-seed means), retention mean and interval,
    speed-up, and minutes per run."""
    by = defaultdict(list)
    for r in rows:
        by[(r["arm"], r["target"])].append(r)
    out = []
    for (arm, target), runs in by.items():
        entry = {"arm": arm, "target": target, "kind": runs[0]["kind"], "datasets": {}}
        for d in datasets:
            mine = [r for r in runs if r["dataset"] == d]
            if mine:
                entry["datasets"][d] = {**mean_ci([r["retention"] for r in mine]),
                                        "speed_up": sum(r["speed_up"] for r in mine) / len(mine)}
        seeds = sorted({r["seed"] for r in runs})
        per_seed = [sum(r["retention"] for r in runs if r["seed"] == s) / sum(1 for r in runs if r["seed"] == s)
                    for s in seeds if all(any(r["seed"] == s and r["dataset"] == d for r in runs) for d in datasets)]
        entry["overall"] = mean_ci(per_seed)
        entry["speed_up"] = sum(r["speed_up"] for r in runs) / len(runs)
        entry["minutes"] = sum(r["seconds"] for r in runs) / len(runs) / 60
        out.append(entry)
    return sorted(out, key=lambda e: (e["target"], -e["overall"]["mean"]))


def cell(ci: dict | None) -> str:
    """``98.1% ± 1.2`` (retention in percent, half-width in points), or ``-``."""
    if not ci:
        return "-"
    if ci["half_width"] is None:
        return f"{100 * ci['mean']:.1f}% (n=1)"
    return f"{100 * ci['mean']:.1f}% ± {100 * ci['half_width']:.1f}"


def plot_retention(summary: list[dict], out_png: Path, title: str) -> Path:
    """Retention (over datasets) against achieved speed-up, one line per arm, 95% intervals as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    arms = sorted({e["arm"] for e in summary})
    for arm in arms:
        pts = sorted((e["speed_up"], e["overall"]) for e in summary if e["arm"] == arm)
        xs = [x for x, _ in pts]
        ys = [100 * c["mean"] for _, c in pts]
        err = [100 * (c["half_width"] or 0) for _, c in pts]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=arm, ls="-" if len(xs) > 1 else "none")
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.axhline(98, color="tab:red", lw=0.8, ls="--", label="98% (the 2x goal)")
    ax.set_xlabel("speed-up (baseline GFLOPs / pruned GFLOPs)")
    ax.set_ylabel("retention: finetuned mAP50-95 / control's (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")
    return out_png
