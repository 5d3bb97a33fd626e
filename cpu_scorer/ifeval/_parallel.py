"""Judging many responses: in batches, on every core for large inputs, always in order."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from cpu_scorer.ifeval import _evaluate, _langdetect, _text
from shared.errors import TandemError

# Texts whose language is asked are detected a batch at a time, all advancing together
# one numpy step at a time: the more texts per step, the less overhead per text. A batch
# of this many responses holds a few MB of detection state.
BATCH = 2048
# Below this many responses, starting worker processes costs more than it saves.
PARALLEL_MIN = 512

Item = tuple[str, str, Sequence[str], Sequence[Any]]


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def prepare_all(items: Sequence[Item]) -> list[_evaluate.Task]:
    """Validate every item before judging any; errors name the item's position."""
    tasks = []
    for index, item in enumerate(items):
        try:
            _prompt, response, instruction_id_list, kwargs = item
            tasks.append(_evaluate.prepare(response, instruction_id_list, kwargs))
        except TandemError as error:
            raise TandemError(f"item {index}: {error}") from error
        except (TypeError, ValueError) as error:
            raise TandemError(
                f"item {index}: expected (prompt, response, instruction_id_list, kwargs): {error}"
            ) from error
    return tasks


def _load_models() -> None:
    _langdetect.load()
    _text.load()


def judge_all(
    tasks: Sequence[_evaluate.Task],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[_evaluate.Verdict]:
    """Verdicts in input order. Deterministic: the work is cut into contiguous slices,
    and every checker, langdetect included, is a pure function of its text."""
    if workers is not None and workers < 1:
        raise TandemError(f"workers must be at least 1, got {workers}")
    workers = 1 if len(tasks) < PARALLEL_MIN else (workers or cpu_count())
    # One contiguous share per process. A share is judged in as few batches as memory
    # allows: every batch pays for the few slowest texts of its language detection.
    share = max(1, -(-len(tasks) // workers))
    shares = [_batches(tasks[i : i + share]) for i in range(0, len(tasks), share)]
    if len(shares) <= 1:  # models load on first use, if at all
        return _judge_batches(shares[0] if shares else [], progress)
    # Only here: multiprocessing and concurrent.futures cost ~0.02-0.04 s to import, more
    # than judging a few hundred responses.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _load_models()  # before forking, so that the workers share them
    # This process judges the first share while workers judge the others: one process
    # fewer holding the models. fork shares the loaded models and starts in
    # milliseconds; it is only safe while this process has no other threads.
    # (concurrent.futures rather than multiprocessing.Pool: a worker that dies is an
    # error here, where Pool would replace it and wait for its result forever.)
    context = multiprocessing.get_context("fork" if _can_fork() else "spawn")
    with ProcessPoolExecutor(len(shares) - 1, context, initializer=_load_models) as pool:
        pending = [pool.submit(_evaluate.judge, batch) for s in shares[1:] for batch in s]
        # Only now: a progress bar may start a thread, and the workers exist.
        verdicts = _judge_batches(shares[0], progress)
        for future in pending:
            done = future.result()
            verdicts.extend(done)
            if progress:
                progress(len(done))
    return verdicts


def _batches(tasks: Sequence[_evaluate.Task]) -> list[Sequence[_evaluate.Task]]:
    return [tasks[i : i + BATCH] for i in range(0, len(tasks), BATCH)]


def _judge_batches(
    batches: list[Sequence[_evaluate.Task]], progress: Callable[[int], None] | None
) -> list[_evaluate.Verdict]:
    if progress:
        progress(0)
    verdicts: list[_evaluate.Verdict] = []
    for batch in batches:
        verdicts.extend(_evaluate.judge(batch))
        if progress:
            progress(len(batch))
    return verdicts


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
