"""Reading a run's report.json and writing report files atomically.

A run directory holds ``report.json`` (written by the pipeline) and ``history.csv`` (one row per
pruning step). Everything here either validates what was read, so that a broken file becomes one
clear ``UserError`` instead of a ``KeyError`` three calls later, or writes a file so that a reader
never sees half of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rtdetr_prune.errors import UserError

REPORT_JSON = "report.json"
STAGE_KEYS = ("params", "gflops", "size_mb", "map50", "map50_95", "latency_ms")
# Only what the tables need is required; the pipeline may add keys later without breaking reports.
REQUIRED_KEYS = ("method", "speed_up_target", "speed_up_achieved", "baseline", "pruned")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_report(report, source: str = "report") -> dict:
    """Check that a report dict has the keys and types the tables rely on.

    Extra keys are allowed. ``finetuned`` may be missing or null; ``steps`` and ``skipped`` may be
    missing. Stage values other than ``params`` and ``gflops`` may be null (not measured).

    Args:
        report: The parsed report.json.
        source: Where it came from, named in the error message.

    Returns:
        The same dict, for chaining.

    Raises:
        UserError: When a key is missing or a value has the wrong type.

    Example:
        >>> validate_report(json.loads(Path("runs/exp1/report.json").read_text()))  # doctest: +SKIP
    """
    if not isinstance(report, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(report).__name__}.")
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise UserError(f"{source}: missing key(s) {', '.join(missing)}; was it written by "
                        "`rtdetr-prune prune`? Rerun the prune step to regenerate it.")
    for key in ("speed_up_target", "speed_up_achieved"):
        if not _is_number(report[key]):
            raise UserError(f"{source}: '{key}' must be a number, got {report[key]!r}.")
    for stage in ("baseline", "pruned", "finetuned"):
        values = report.get(stage)
        if values is None and stage == "finetuned":
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: '{stage}' must be an object with keys {', '.join(STAGE_KEYS)}.")
        for key in STAGE_KEYS:
            value = values.get(key)
            nullable = key not in ("params", "gflops")
            if not (_is_number(value) or (nullable and value is None)):
                raise UserError(f"{source}: '{stage}.{key}' must be a number"
                                f"{' or null' if nullable else ''}, got {value!r}.")
    skipped = report.get("skipped") or []
    if not isinstance(skipped, list) or not all(isinstance(s, dict) for s in skipped):
        raise UserError(f"{source}: 'skipped' must be a list of {{\"layer\", \"reason\"}} objects.")
    return report


def load_report(run_dir) -> dict:
    """Read and validate ``run_dir/report.json``.

    Args:
        run_dir: A pruning run directory.

    Returns:
        The report dict.

    Raises:
        UserError: When the file is missing, is not JSON, or lacks the expected keys.

    Example:
        >>> load_report("runs/prune/exp1")["method"]  # doctest: +SKIP
        'lamp'
    """
    path = Path(run_dir) / REPORT_JSON
    if not path.is_file():
        hint = "the directory does not exist" if not Path(run_dir).exists() else "no report.json in it"
        raise UserError(f"{run_dir}: not a pruning run directory ({hint}). Pass the directory that "
                        "`rtdetr-prune prune` created, e.g. runs/prune/exp1.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}). Rerun the prune step to regenerate it.") from e
    return validate_report(report, source=str(path))
