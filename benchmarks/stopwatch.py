"""Exclusive wall time per stage of code we do not edit, by wrapping its functions for a while.

``Stopwatch.patched`` swaps named functions (module or class attributes) for timed wrappers and puts
the originals back afterwards. Time is *exclusive*: when a wrapped function calls another wrapped
function, the inner call's time goes to the inner stage only, so the stages add up to at most the
wall time, and the rest is "other". The wrappers cost about a microsecond per call.

Example:
    >>> watch = Stopwatch()
    >>> with watch.patched([(graph_module, "trace", "graph build")]):
    ...     run_the_engine()
    >>> watch.seconds  # {"graph build": 1.9}
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from typing import Callable, Iterable


class Stopwatch:
    """Exclusive seconds and call counts per stage."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inner: list[float] = []  # per open call: time spent in wrapped calls nested inside it

    def wrap(self, fn: Callable, stage: str) -> Callable:
        """``fn`` with its exclusive time charged to ``stage``."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._inner.append(0.0)
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = self.clock() - t0
                self.seconds[stage] += elapsed - self._inner.pop()
                self.calls[stage] += 1
                if self._inner:
                    self._inner[-1] += elapsed

        return timed

    @contextlib.contextmanager
    def patched(self, targets: Iterable[tuple[object, str, str]]):
        """Time ``owner.name`` as ``stage`` for each ``(owner, name, stage)`` inside the block.

        Raises:
            AttributeError: a target does not exist (the code being measured changed: update the list).
        """
        saved = []
        try:
            for owner, name, stage in targets:
                original = _attribute(owner, name)
                saved.append((owner, name, original))
                setattr(owner, name, self.wrap(original, stage))
            yield self
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)


def _attribute(owner: object, name: str):
    """``owner.name`` as stored (a class's own function, not a bound or inherited one)."""
    found = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if found is None:
        label = getattr(owner, "__name__", type(owner).__name__)
        raise AttributeError(f"cannot time {label}.{name}: it is gone from the code being measured; "
                             "update the benchmark's list of stages")
    return found
