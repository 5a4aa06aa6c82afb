"""The one exception type a user can cause. The CLI prints its message on one line and exits with 2."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake in the user's input (file, option, value). The message says how to fix it."""


def suggest(name: str, choices) -> str:
    """Return " Did you mean 'x'?" for the closest valid choice, or "" when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
