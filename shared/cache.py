"""Where tandem keeps what it can rebuild: ``$TANDEM_CACHE``, else
``$XDG_CACHE_HOME/tandem``, else ``~/.cache/tandem``.

Everything in it is derived data (a dequantized embedded model, merged adapters,
langdetect's profiles in ready-to-load form), keyed so that a stale entry is never
used, and safe to delete at any time: it is built again on next use.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder, read from the environment at each call (never created here)."""
    root = os.environ.get("TANDEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tandem"
    )
    return Path(root)
