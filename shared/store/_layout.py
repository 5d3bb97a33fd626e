"""Where everything lives in a store, and the names that are allowed there.

::

    runs/<run_id>/run.json                                 the run record, written once
    runs/<run_id>/summary.json                             aggregates, rewritten as scores land
    runs/<run_id>/profile.json                             latency/throughput (tandem profile)
    runs/<run_id>/jobs/<job_id>.json                       a Ray generation job: placement,
                                                           retried shards
    runs/<run_id>/generations/<task>/<shard>.parquet       written by workers
    runs/<run_id>/scores/<task>/<shard>.parquet            written by scorers, one per shard
    runs/<run_id>/quarantine/<task>/<shard>.parquet        a generation shard that is bad
    runs/<run_id>/quarantine/<task>/<shard>.error.json     ... and why
    runs/<run_id>/quarantine/<task>/<shard>.scores-<digest>.parquet     a damaged score
    runs/<run_id>/quarantine/<task>/<shard>.scores-<digest>.error.json  shard, moved aside
    runs/<run_id>/quarantine/_run/<name>.error.json        a problem of the run itself (a
                                                           run.json or folder it cannot use)
    runs/<run_id>/claims/<task>/<shard>.json               scorer leases (expire)
    sweeps/<name>/sweep.json                               a checkpoint sweep: caps, steps

Shard names are the sample range they hold, ``<start>-<end>`` zero-padded to 7 digits, so
a restarted job lists what exists and does only the missing ranges. Names starting with
``.`` are temp files or private and are never listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import TandemError

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TASK_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
SHARD_PATTERN = re.compile(r"^(\d{7})-(\d{7})$")

RUNS = "runs"
SWEEPS = "sweeps"
SWEEP_RECORD = "sweep.json"
RUN_RECORD = "run.json"
SUMMARY = "summary.json"
PROFILE = "profile.json"
JOBS = "jobs"  # one record per generation job over Ray (not a task folder kind)

# The folder kinds under a run; each holds one folder per task.
GENERATIONS = "generations"
SCORES = "scores"
QUARANTINE = "quarantine"
CLAIMS = "claims"
FOLDERS = (GENERATIONS, SCORES, QUARANTINE, CLAIMS)

SHARD_SUFFIX = ".parquet"
ERROR_SUFFIX = ".error.json"
CLAIM_SUFFIX = ".json"
# quarantine/_run/ is not a task name (tasks start with a letter or digit).
RUN_PROBLEMS = "_run"
_DAMAGED_SCORE = re.compile(r"^(\d{7}-\d{7})\.scores-[0-9a-f]{12}$")


@dataclass(frozen=True, order=True)
class ShardRef:
    """One shard of one task: samples [start, end) in the task's canonical order."""

    run_id: str
    task: str
    start: int
    end: int

    @property
    def name(self) -> str:
        return shard_name(self.start, self.end)

    def __str__(self) -> str:
        return f"{self.run_id}/{self.task}/{self.name}"


def shard_name(start: int, end: int) -> str:
    return f"{start:07d}-{end:07d}"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(start, end) of a shard name without suffix, or None when it is not one."""
    match = SHARD_PATTERN.match(name)
    if not match:
        return None
    start, end = int(match[1]), int(match[2])
    return (start, end) if start < end else None


def damaged_score_shard(stem: str) -> str | None:
    """The shard name of a moved-aside score shard's stem, or None."""
    match = _DAMAGED_SCORE.match(stem)
    return match[1] if match else None


def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """Deterministic shard boundaries: shard k holds [k*S, min((k+1)*S, total))."""
    return [(start, min(start + shard_size, total)) for start in range(0, total, shard_size)]


def is_run_id(name: str) -> bool:
    return isinstance(name, str) and bool(RUN_ID_PATTERN.match(name)) and ".." not in name


def is_task_name(name: str) -> bool:
    return isinstance(name, str) and bool(TASK_PATTERN.match(name)) and ".." not in name


def check_run_id(run_id: str) -> str:
    """Refuse run ids that could escape the store (``..``, slashes, etc.)."""
    if not is_run_id(run_id):
        raise TandemError(
            f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit"
        )
    return run_id


def check_task(task: str) -> str:
    if not is_task_name(task):
        raise TandemError(
            f"invalid task name {task!r}: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return task
