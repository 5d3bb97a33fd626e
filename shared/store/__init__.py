"""The run store: immutable Parquet shards and two JSON records per run.

The store owns its layout (``_layout``: folder kinds, shard names, the run-id and task
patterns), the state of every shard (``_state``: generated, scored, quarantined,
pending, leased, from one listing per folder) and its I/O (``_store``: atomic publish,
exclusive creation, typed run and summary records, temp-file sweeping). Nothing else in
tandem spells out a path inside a run.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.store._store import Store

from shared.store._layout import (
    CLAIM_SUFFIX,
    CLAIMS,
    ERROR_SUFFIX,
    FOLDERS,
    GENERATIONS,
    PROFILE,
    QUARANTINE,
    RUN_ID_PATTERN,
    RUN_PROBLEMS,
    RUN_RECORD,
    SCORES,
    SHARD_PATTERN,
    SHARD_SUFFIX,
    SUMMARY,
    TASK_PATTERN,
    ShardRef,
    check_run_id,
    check_task,
    is_run_id,
    is_task_name,
    parse_shard_name,
    shard_name,
    shard_ranges,
)
from shared.store._state import FileStamp, RunState, TaskState


def __getattr__(name: str) -> object:
    # Store brings pyarrow; the layout alone (run-id and task patterns, shard names) is
    # what the spec and the CLI need, so Store is imported on first use.
    if name == "Store":
        from shared.store._store import Store

        return Store
    raise AttributeError(f"module 'shared.store' has no attribute {name!r}")


__all__ = [
    "CLAIM_SUFFIX",
    "CLAIMS",
    "ERROR_SUFFIX",
    "FOLDERS",
    "GENERATIONS",
    "PROFILE",
    "QUARANTINE",
    "RUN_ID_PATTERN",
    "RUN_PROBLEMS",
    "RUN_RECORD",
    "SCORES",
    "SHARD_PATTERN",
    "SHARD_SUFFIX",
    "SUMMARY",
    "TASK_PATTERN",
    "FileStamp",
    "RunState",
    "ShardRef",
    "Store",
    "TaskState",
    "check_run_id",
    "check_task",
    "is_run_id",
    "is_task_name",
    "parse_shard_name",
    "shard_name",
    "shard_ranges",
]
