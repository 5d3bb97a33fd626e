"""The one project error type. Its message is meant for the user, not a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TandemError(Exception):
    """A user-facing error: says what is wrong, where, what is allowed and how to fix it.

    The CLI prints ``str(error)`` and exits 2 instead of showing a traceback.
    """


class WriteError(TandemError):
    """A write failed (disk full, read-only, no permission); nothing partial was left.
    Readers that must never stop (the scorer daemon) retry these later; one-shot
    commands stop with the message."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """A "did you mean" suffix naming the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> TandemError:
    """Error for a name missing from a registry, listing the valid names and the closest."""
    valid = sorted(valid)
    return TandemError(
        f"unknown {kind} {name!r}{did_you_mean(name, valid)}; allowed: {', '.join(valid)}"
    )
