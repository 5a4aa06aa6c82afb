"""The one exception type a user can cause. The CLI prints its message on one line and exits with 2."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake in the user's input (file, option, value). The message says how to fix it."""


def suggest(name: str, choices) -> str:
    """Return " Did you mean 'x'?" for the closest valid choice, or "" when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def first_line(e: BaseException, lines: int = 1, width: int = 200, with_type: bool = True) -> str:
    """An exception in one line: ``"Type: first line of the message"`` (``lines`` non-empty lines joined,
    each cut at ``width``; without the type name if ``with_type`` is False).

    Example:
        >>> first_line(ValueError("bad value\nmore detail"))
        'ValueError: bad value'
    """
    text = " ".join(line.strip()[:width] for line in str(e).strip().splitlines()[:lines] if line.strip())
    if not with_type:
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
