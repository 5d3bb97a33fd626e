"""The scoring pipeline for one shard: read, check, score, publish -- or quarantine.

The daemon, ``tandem score`` (the daemon's run-once mode) and any other driver score a
shard through ``score_shard`` and set a bad one aside through ``quarantine``, so the
rules below hold everywhere. A generation shard is scored only if it is what its place
in the store says it is; otherwise it is quarantined with a reason naming it:

* its folder names a task this tandem knows, and the run's record plans that task;
* it is readable Parquet of a tandem schema this version understands, with the
  columns and types of that schema, of the kind its task produces (a multiple-choice
  shard in the ``ifeval/`` folder is refused, not fed to the IFEval checkers);
* every row's ``run_id`` and ``task`` are the run's and the folder's, sample ids are
  unique, and there are exactly as many rows as the shard's name says;
* its range is one of the ranges the run's plan cuts the task into (so a copy under
  another name, or a shard overlapping another, never doubles a sample), and a shard
  that records its own range (``tandem.shard``) carries the name it is stored under.

A score shard that turns out damaged later is moved aside (never deleted), which makes
its generation shard pending again, and is scored anew.
"""

from __future__ import annotations

import hashlib
import traceback
from typing import TYPE_CHECKING

import pyarrow as pa

from cpu_scorer._rows import DEFAULT_OPTIONS, SCORER_VERSION, ScoreOptions
from cpu_scorer.scorers import read_generation, score_rows
from shared.errors import TandemError
from shared.records import RunRecord
from shared.schema import extras_of
from shared.store import (
    ERROR_SUFFIX,
    GENERATIONS,
    QUARANTINE,
    SCORES,
    ShardRef,
    Store,
    shard_ranges,
)
from shared.tasks import TASKS, TaskDef

if TYPE_CHECKING:
    from cpu_scorer.daemon import Tally

# What makes a shard unusable (corrupt, truncated, wrong schema, bad rows). A plain
# OSError while *reading* may instead be a store hiccup: drivers retry it first.
QUARANTINE_ERRORS = (TandemError, pa.ArrowException, OSError, KeyError, ValueError, TypeError)


def task_of(ref: ShardRef, record: RunRecord) -> TaskDef:
    """The task a shard's folder names, if this tandem knows it and the run plans it."""
    task = TASKS.get(ref.task)
    if task is None:
        raise TandemError(
            f"{ref.task!r} is not a task this tandem knows (it knows {', '.join(sorted(TASKS))})"
        )
    if record.tasks and ref.task not in record.tasks:
        raise TandemError(
            f"task {ref.task!r} is not part of run {ref.run_id!r} (its run.json plans "
            f"{', '.join(sorted(record.tasks))})"
        )
    return task


def score_generation(
    table: pa.Table, ref: ShardRef, record: RunRecord, options: ScoreOptions = DEFAULT_OPTIONS
) -> pa.Table:
    """The scores table of a generation shard read from ``ref``'s place, after the checks
    in the module docstring; TandemError naming what is wrong otherwise (and
    NeedsConfirmation, which is not the shard's fault, for code the user did not let run)."""
    task = task_of(ref, record)
    generation, rows = read_generation(table, task)
    scores = score_rows(generation, rows, task, options)
    check_identity(generation, rows, ref, record)
    return scores


def check_identity(table: pa.Table, rows: list[dict], ref: ShardRef, record: RunRecord) -> None:
    """The shard's rows belong where it is stored (see the module docstring)."""
    for column, want in (("run_id", ref.run_id), ("task", ref.task)):
        found = sorted({str(r[column]) for r in rows} - {want})
        if found:
            raise TandemError(
                f"rows with {column} {', '.join(map(repr, found[:3]))} in a shard of "
                f"{column.replace('_id', '')} {want!r}: it was copied from elsewhere"
            )
    ids = [r["sample_id"] for r in rows]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise TandemError(f"duplicate sample ids {repeated[:5]} in one shard")
    if len(rows) != ref.end - ref.start:
        raise TandemError(
            f"{len(rows)} rows in a shard named for samples {ref.start}-{ref.end} "
            f"({ref.end - ref.start} rows)"
        )
    plan = record.tasks.get(ref.task)
    if plan is not None and (ref.start, ref.end) not in shard_ranges(plan.samples, plan.shard_size):
        raise TandemError(
            f"range {ref.start}-{ref.end} is not one of the run's shards of task {ref.task!r} "
            f"({plan.samples} samples in shards of {plan.shard_size}); it overlaps or "
            "duplicates another"
        )
    own = extras_of(table).get("shard")
    if own and own != ref.name:
        raise TandemError(f"the shard was written as {own} but is stored as {ref.name}")


def publish_scores(store: Store, ref: ShardRef, scores: pa.Table) -> None:
    store.publish_table(store.shard_path(SCORES, ref), scores)


def quarantine(store: Store, ref: ShardRef, error: BaseException) -> None:
    """Move a bad generation shard aside with an error record; nothing is deleted.

    The record is written first: a kill before the move leaves a recorded shard still
    under generations/, and the next scan completes the move (``finish_quarantine``).
    """
    source = store.shard_path(GENERATIONS, ref)
    store.publish_json(
        store.shard_path(QUARANTINE, ref, ERROR_SUFFIX), _record(store, ref, source, error)
    )
    if store.exists(source):
        store.move(source, store.shard_path(QUARANTINE, ref))


def finish_quarantine(store: Store, ref: ShardRef) -> bool:
    """Complete a quarantine a kill interrupted; True if something was moved."""
    source = store.shard_path(GENERATIONS, ref)
    target = store.shard_path(QUARANTINE, ref)
    if not store.exists(target):
        store.move(source, target)
        return True
    if store.read_bytes(target) == store.read_bytes(source):
        # An object-store move is copy + delete; a kill between left two copies.
        store.delete(source)
    return False


def set_aside_scores(store: Store, ref: ShardRef, error: BaseException) -> str:
    """Move a damaged score shard into quarantine/ under a name holding its content
    digest (so a second damage never overwrites the first), with a record of why. Its
    generation shard is pending again. Returns the new name."""
    source = store.shard_path(SCORES, ref)
    data = store.read_bytes(source)
    name = f"{ref.name}.scores-{hashlib.sha256(data).hexdigest()[:12]}"
    folder = store.run_path(ref.run_id, QUARANTINE, ref.task)
    store.publish_json(f"{folder}/{name}{ERROR_SUFFIX}", _record(store, ref, source, error))
    store.move(source, f"{folder}/{name}.parquet")
    return name


def _record(store: Store, ref: ShardRef, source: str, error: BaseException) -> dict:
    return {
        "run_id": ref.run_id,
        "task": ref.task,
        "shard": ref.name,
        "source": store.relative(source),
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception_only(type(error), error)).strip(),
        "scorer_version": SCORER_VERSION,
    }


def score_once(
    store: Store,
    run_id: str | None = None,
    options: object | None = None,
    progress: bool = True,
    confirm_unsafe_code: bool = False,
) -> dict[str, Tally]:
    """``tandem score``: the daemon's run-once mode over one run (or all); returns the
    per-run tallies (``cpu_scorer.daemon.Tally``)."""
    from cpu_scorer.daemon import Daemon, DaemonConfig

    if run_id:
        store.run_record(run_id)  # clear error for an unknown run
    config = DaemonConfig(
        once=True,
        interval=0.2,
        irt_params=getattr(options, "irt_params", None),
        only_run=run_id,
        progress=progress,
        confirm_unsafe_code=confirm_unsafe_code,
    )
    daemon = Daemon(store, config)
    daemon.run()
    return dict(daemon.runs)


def score_store(
    store: Store,
    run_id: str | None = None,
    options: object | None = None,
    progress: bool = True,
    confirm_unsafe_code: bool = False,
) -> dict[str, dict[str, int]]:
    """``score_once``, as counts: per run, shards scored and quarantined."""
    return {
        rid: {"scored": t.scored, "quarantined": t.quarantined}
        for rid, t in score_once(store, run_id, options, progress, confirm_unsafe_code).items()
    }
