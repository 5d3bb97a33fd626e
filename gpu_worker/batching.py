"""Length-sorted batches: padding is what makes batched generation slow, so sequences
of similar length go together, longest first (an out-of-memory shows up on the first
batch, not after an hour of work)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def available_cores() -> int:
    """Cores this process may really use: affinity mask and cgroup quota, not nproc.

    Oversubscribed torch threads made CPU generation ~10x slower here, so torch gets
    exactly this many. TANDEM_THREADS overrides (Ray CPU actors get their share).
    """
    if os.environ.get("TANDEM_THREADS", "").isdigit():
        return max(1, int(os.environ["TANDEM_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, token_budget: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches, longest first.

    A batch holds at most ``batch_size`` items and, when ``token_budget`` is given, at
    most that many padded tokens (longest length x count), so one very long prompt does
    not force a huge padded batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        too_many = len(current) >= batch_size
        too_big = (
            token_budget is not None and current and longest * (len(current) + 1) > token_budget
        )
        if current and (too_many or too_big):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
