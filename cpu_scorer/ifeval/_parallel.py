"""Judging many responses: in batches, on every core for large inputs, always in order."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from cpu_scorer.ifeval import _evaluate, _langdetect, _text
from shared.errors import TandemError

# Texts whose language is asked are detected a batch at a time, all advancing together
# one numpy step at a time: the more texts per step, the less overhead per text. A batch
# of this many responses holds a few MB of detection state.
BATCH = 1024
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
    """Verdicts in input order. Deterministic: batches are contiguous slices, and every
    checker, langdetect included, is a pure function of its text."""
    if workers is not None and workers < 1:
        raise TandemError(f"workers must be at least 1, got {workers}")
    workers = 1 if len(tasks) < PARALLEL_MIN else (workers or cpu_count())
    # Two batches per worker at least, so a worker that finishes early takes another.
    size = max(1, min(BATCH, -(-len(tasks) // (2 * workers)) if workers > 1 else BATCH))
    batches = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    _load_models()
    verdicts: list[_evaluate.Verdict] = []
    if workers <= 1:
        if progress:
            progress(0)
        for batch in batches:
            verdicts.extend(_evaluate.judge(batch))
            if progress:
                progress(len(batch))
        return verdicts
    # fork shares the loaded models with the workers and starts in milliseconds; it is
    # only safe while this process has no other threads, otherwise start fresh ones.
    method = "fork" if _can_fork() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_load_models) as pool:
        if progress:
            progress(0)  # only now: a progress bar may start a thread, and we have forked
        for done in pool.imap(_evaluate.judge, batches):
            verdicts.extend(done)
            if progress:
                progress(len(done))
    return verdicts


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
