"""Progress bars for long work (pruning steps, data batches, training), in one place.

Bars go to stderr, and switch themselves off when stderr is not a terminal or when
``RTDETR_PRUNE_QUIET=1`` is set, so logs and tests stay clean.
"""

from __future__ import annotations

import os

from tqdm import tqdm


def progress(iterable=None, desc: str = "", total: int | None = None, leave: bool = True):
    """A tqdm bar over ``iterable`` (disabled when quiet or not on a terminal)."""
    quiet = os.environ.get("RTDETR_PRUNE_QUIET", "") not in {"", "0"}
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, disable=True if quiet else None)
