"""IFEval scoring on CPU: Google's 25 instruction checkers, strict and loose, at parity with
the reference (lm-evaluation-harness 0.4.13's port), offline and deterministic.

    >>> v = evaluate(prompt, response, ["punctuation:no_comma"], [{}])
    >>> v.strict, v.loose, v.prompt_strict
    ((True,), (True,), True)

See docs/ifeval.md for what differs from the reference and why (invalid letters, 0 and ""
arguments) and how it stays offline (Punkt model from PyPI, seeded langdetect).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cpu_scorer.ifeval._checkers import INSTRUCTIONS, Instruction
from cpu_scorer.ifeval._evaluate import METRICS, Verdict, aggregate, loose_variants

__all__ = [
    "INSTRUCTIONS",
    "METRICS",
    "Instruction",
    "Verdict",
    "aggregate",
    "evaluate",
    "evaluate_many",
    "loose_variants",
]


def evaluate(
    prompt: str,
    response: str,
    instruction_id_list: Sequence[str],
    kwargs: Sequence[Mapping[str, Any]],
) -> Verdict:
    """Strict and loose verdicts of one response, one per instruction id.

    ``kwargs[i]`` holds the arguments of ``instruction_id_list[i]``; ``None`` values mean
    absent. An unknown id or a bad argument raises ``TandemError`` naming both. The prompt
    is not needed by any checker; it is taken so callers pass whole dataset rows.
    """
    from cpu_scorer.ifeval import _evaluate, _parallel

    task = _evaluate.prepare(response, instruction_id_list, kwargs)
    return _parallel.judge_all([task], workers=1)[0]


def evaluate_many(
    items: Sequence[tuple[str, str, Sequence[str], Sequence[Mapping[str, Any]]]],
    workers: int | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[Verdict]:
    """:func:`evaluate` for (prompt, response, instruction_id_list, kwargs) items, in order.

    Every item is validated before any is judged. Large inputs are split over ``workers``
    processes (default: every core this process may use); the result is the same for any
    number of workers. ``progress`` is called with 0 once work has started (worker
    processes, if any, are running), then with n as each batch of n items is done.
    """
    from cpu_scorer.ifeval import _parallel

    tasks = _parallel.prepare_all(items)
    return _parallel.judge_all(tasks, workers, progress)
