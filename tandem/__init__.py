"""tandem: the command line (``tandem.cli``) and the in-process API.

Each command imports its tier only when it runs, so ``tandem score`` never loads torch
and ``tandem generate`` never loads the scorer. ``tandem.evaluate`` evaluates a model
already in memory (a training loop's) and is imported on first use.
"""

from typing import Any


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """See ``tandem.evaluate.evaluate`` (imported here on first call: it needs torch)."""
    from tandem.evaluate import evaluate as run

    return run(*args, **kwargs)
