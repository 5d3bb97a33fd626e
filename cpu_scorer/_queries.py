"""Read-side queries over a run store for the HTTP API and ``tandem compare``.

Samples are read with pyarrow, shard by shard: a score shard has the name and the row
order of its generation shard, so the two are put side by side without a join. A task
index (which shard and row holds each sample, its id, and whether it passed) is built
from a few small columns and cached under the stamps (size and mtime) of the exact
files it was built from: a new, removed or rewritten shard changes the key. A page then
reads only the one or two shards it shows; compare reads only the index and, for the
samples that flipped, a few small columns.

Whether a sample passed is its task scorer's pass metric equal to 1 (IFEval: every
instruction, strict; multiple choice: acc); a task without one (perplexity) has no
pass/fail.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cpu_scorer.scorers import SCORERS
from shared.errors import TandemError
from shared.records import RunRecord
from shared.schema import SCORES as SCORES_SCHEMA
from shared.schema import schema_of, upgrade
from shared.store import GENERATIONS, RUN_RECORD, SCORES, FileStamp, ShardRef, Store, TaskState
from shared.tasks import TASKS

# Generation columns worth showing next to the verdicts; whichever exist are kept.
GENERATION_COLUMNS = (
    "prompt",
    "response",
    "finish_reason",
    "generated_tokens",
    "choices",
    "gold",
    "text",
    "doc",
)
SCORE_COLUMNS = (
    "metrics",
    "instruction_id_list",
    "inst_level_strict",
    "inst_level_loose",
    "prediction",
    "details",
)
# The columns of an export, the same for every task so one file can hold a whole run.
EXPORT_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("task", pa.string()),
        pa.field("sample_id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("response", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("prediction", pa.int32()),
        pa.field("gold", pa.int32()),
        pa.field("details", pa.string()),
        pa.field("metrics", pa.map_(pa.string(), pa.float64())),
        pa.field("instruction_id_list", pa.list_(pa.string())),
        pa.field("inst_level_strict", pa.list_(pa.bool_())),
        pa.field("inst_level_loose", pa.list_(pa.bool_())),
        pa.field("passed", pa.bool_()),
        pa.field("scored", pa.bool_()),
        pa.field("error", pa.string()),
    ]
)


class RunNotFound(TandemError):
    """The run (or the task in it) is not in the store."""


class Damaged(TandemError):
    """A file of the run cannot be read (a damaged record or shard); the API answers 503
    and a scorer repairs what it can (a damaged score shard is scored again)."""


def pass_metric(task: str) -> str | None:
    """The per-sample metric whose value 1 means the sample passed, for ``task``."""
    definition = TASKS.get(task)
    scorer = SCORERS.get(definition.scorer) if definition else None
    return scorer.pass_metric if scorer else None


def require_run(store: Store, run_id: str) -> RunRecord:
    """The run's record; RunNotFound when there is no run, Damaged when it is unusable."""
    path = store.run_path(run_id, RUN_RECORD)
    if not store.exists(path):
        raise RunNotFound(f"no run {run_id!r} in this store")
    try:
        return store.run_record(run_id)
    except TandemError as error:
        raise Damaged(f"run {run_id!r} cannot be read: {error}") from error


def _passed(scores: pa.Table, metric: str | None) -> pa.Array:
    """Per row: did the sample pass? An errored row did not; without a pass metric (or
    a value for it) the answer is null."""
    errors = scores.column("error").to_pylist()
    if metric is None:
        values: list[Any] = [None] * len(errors)
    else:
        values = pc.map_lookup(scores.column("metrics"), pa.scalar(metric), "first").to_pylist()
    return pa.array(
        [
            False if e is not None else (None if v is None else v == 1.0)
            for v, e in zip(values, errors, strict=True)
        ],
        pa.bool_(),
    )


def _read(store: Store, path: str, columns: list[str] | None = None) -> pa.Table:
    try:
        table = store.read_table(path, columns=columns)
        if columns is None:
            _, table = upgrade(table)
        else:
            schema_of(table)  # refuse a file that is not a tandem shard
        return table
    except FileNotFoundError:
        raise
    except (TandemError, pa.ArrowException, OSError, ValueError) as error:
        raise Damaged(f"{store.relative(path)} cannot be read: {error}") from error


def _read_schema(store: Store, path: str) -> pa.Schema:
    try:
        return store.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise Damaged(f"{store.relative(path)} cannot be read: {error}") from error


def shard_samples(store: Store, ref: ShardRef, scored: bool) -> pa.Table:
    """One generation shard with its verdicts beside it (nulls while unscored)."""
    generation = _read(store, store.shard_path(GENERATIONS, ref))
    keep = ["sample_id", *[c for c in GENERATION_COLUMNS if c in generation.column_names]]
    table = generation.select(keep).append_column("gen_error", generation.column("error"))
    rows = table.num_rows
    if scored:
        scores = _read(store, store.shard_path(SCORES, ref))
        if scores.column("sample_id").to_pylist() != table.column("sample_id").to_pylist():
            raise Damaged(f"{ref}: score shard rows do not match its generation shard")
        for name in SCORE_COLUMNS:
            table = table.append_column(name, scores.column(name))
        table = table.append_column("error", scores.column("error"))
        table = table.append_column("passed", _passed(scores, pass_metric(ref.task)))
    else:
        for name in SCORE_COLUMNS:
            table = table.append_column(name, pa.nulls(rows, SCORES_SCHEMA.field(name).type))
        table = table.append_column("error", table.column("gen_error"))
        table = table.append_column("passed", pa.nulls(rows, pa.bool_()))
    return table.append_column("scored", pa.array([scored] * rows, pa.bool_()))


@dataclass(frozen=True)
class TaskIndex:
    """Where each sample of a task lives (shard, row), its id and whether it passed:
    built from the few small columns needed, so a page reads only the shards it shows."""

    refs: tuple[ShardRef, ...]
    scored: tuple[bool, ...]
    sample_id: pa.Array  # string per sample
    shard: pa.Array  # int32 per sample: index into refs
    row: pa.Array  # int32 per sample: row within its shard
    passed: pa.Array  # bool or null per sample
    views: dict[bool | None, pa.Array]  # failed filter -> positions of matching samples


def _build_index(store: Store, state: TaskState) -> TaskIndex:
    refs = state.live
    metric = pass_metric(state.task)
    shard_ids, rows, passed, flags, ids = [], [], [], [], []
    for position, ref in enumerate(refs):
        sample_ids = _read(store, store.shard_path(GENERATIONS, ref), ["sample_id"])
        count = sample_ids.num_rows
        is_scored = ref.name in state.scored
        if is_scored:
            scores = _read(store, store.shard_path(SCORES, ref), ["sample_id", "metrics", "error"])
            if not scores.column("sample_id").equals(sample_ids.column("sample_id")):
                raise Damaged(f"{ref}: score shard rows do not match its generation shard")
            passed.append(_passed(scores, metric))
        else:
            passed.append(pa.nulls(count, pa.bool_()))
        ids.append(sample_ids.column("sample_id").combine_chunks())
        shard_ids.append(pa.array([position] * count, pa.int32()))
        rows.append(pa.array(range(count), pa.int32()))
        flags.append(is_scored)
    verdicts = pa.concat_arrays(passed) if passed else pa.array([], pa.bool_())
    views = {
        None: pa.array(range(len(verdicts)), pa.int64()),
        True: pc.indices_nonzero(pc.fill_null(pc.equal(verdicts, False), False)),
        False: pc.indices_nonzero(pc.fill_null(pc.equal(verdicts, True), False)),
    }
    return TaskIndex(
        refs=tuple(refs),
        scored=tuple(flags),
        sample_id=pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
        shard=pa.concat_arrays(shard_ids) if shard_ids else pa.array([], pa.int32()),
        row=pa.concat_arrays(rows) if rows else pa.array([], pa.int32()),
        passed=verdicts,
        views=views,
    )


class _LRU:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> Any:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


def _stamps(state: TaskState, ref: ShardRef) -> tuple[FileStamp | None, FileStamp | None]:
    return state.generated.get(ref.name), state.scored.get(ref.name)


class SampleCache:
    """Task indexes keyed by the stamps of the files they were built from, whole shards
    (generation + verdicts) and small column reads keyed by their files' stamps."""

    def __init__(self, capacity: int = 16, shard_capacity: int = 128):
        self._indexes = _LRU(capacity)
        self._shards = _LRU(shard_capacity)
        # A few small columns of a shard are cheap to keep: many more of them.
        self._columns = _LRU(shard_capacity * 32)
        # Filtered views of an index (cpu_scorer._samples), keyed by the index's key.
        self._views = _LRU(capacity * 8)

    def state(self, store: Store, run_id: str, task: str) -> TaskState:
        state = store.task_state(run_id, task)
        if not state.live:
            raise RunNotFound(f"run {run_id!r} has no generations for task {task!r}")
        return state

    @staticmethod
    def index_key(store: Store, state: TaskState) -> tuple:
        """What an index of ``state`` was built from: the names and stamps of its files."""
        return (
            store.uri,
            state.run_id,
            state.task,
            tuple((ref.name, *_stamps(state, ref)) for ref in state.live),
        )

    def index(self, store: Store, run_id: str, task: str) -> tuple[TaskState, TaskIndex]:
        state = self.state(store, run_id, task)
        key = self.index_key(store, state)
        index = self._indexes.get(key) or self._indexes.put(key, _build_index(store, state))
        return state, index

    def view(self, key: tuple, compute: Any) -> Any:
        """A derived view (e.g. filtered positions) cached under ``key``, which must
        include the index key it was derived from."""
        value = self._views.get(key)
        return value if value is not None else self._views.put(key, compute())

    def shard(self, store: Store, state: TaskState, ref: ShardRef, scored: bool) -> pa.Table:
        key = (store.uri, ref, scored, *_stamps(state, ref))
        return self._shards.get(key) or self._shards.put(key, shard_samples(store, ref, scored))

    def columns(
        self, store: Store, state: TaskState, ref: ShardRef, kind: str, columns: tuple[str, ...]
    ) -> pa.Table:
        """Just ``columns`` (those that exist) of one generation or score shard."""
        stamps = _stamps(state, ref)
        key = (store.uri, ref, kind, columns, stamps[0 if kind == GENERATIONS else 1])
        table = self._columns.get(key)
        if table is None:
            path = store.shard_path(kind, ref)
            present = [c for c in columns if c in _read_schema(store, path).names]
            table = self._columns.put(key, _read(store, path, present))
        return table

    def column_lists(
        self, store: Store, state: TaskState, ref: ShardRef, kind: str, columns: tuple[str, ...]
    ) -> dict[str, list[Any]]:
        """``columns`` as Python lists (absent ones as None per row), cached."""
        stamps = _stamps(state, ref)
        key = ("lists", store.uri, ref, kind, columns, stamps[0 if kind == GENERATIONS else 1])
        lists = self._columns.get(key)
        if lists is None:
            table = self.columns(store, state, ref, kind, columns)
            lists = {
                name: table.column(name).to_pylist()
                if name in table.column_names
                else [None] * table.num_rows
                for name in columns
            }
            self._columns.put(key, lists)
        return lists

    def page(
        self, store: Store, run_id: str, task: str, failed: bool | None, offset: int, limit: int
    ) -> tuple[int, pa.Table | None]:
        """(matching samples, the rows [offset, offset+limit) of them, in task order)."""
        state, index = self.index(store, run_id, task)
        positions = index.views[failed]
        chosen = positions.slice(offset, limit) if offset < len(positions) else positions[:0]
        if len(chosen) == 0:
            return len(positions), None
        return len(positions), self.rows(store, state, index, chosen.to_pylist())

    def rows(
        self, store: Store, state: TaskState, index: TaskIndex, positions: list[int]
    ) -> pa.Table:
        """The samples at ``positions`` of the index (generation + verdicts), in order."""
        shards = pc.take(index.shard, pa.array(positions, pa.int64())).to_pylist()
        rows = pc.take(index.row, pa.array(positions, pa.int64())).to_pylist()
        parts = []
        # Consecutive samples of one shard are taken together (a page spans 1-2 shards).
        start = 0
        for end in range(1, len(shards) + 1):
            if end == len(shards) or shards[end] != shards[start]:
                number = shards[start]
                table = self.shard(store, state, index.refs[number], index.scored[number])
                parts.append(table.take(pa.array(rows[start:end], pa.int32())))
                start = end
        return pa.concat_tables(parts, promote_options="permissive")


def row_json(row: dict[str, Any]) -> dict[str, Any]:
    """A sample row for JSON: metrics as a dict, IFEval verdicts per instruction."""
    doc = parse_doc(row.pop("doc", None))
    row.pop("gen_error", None)
    row["metrics"] = dict(row["metrics"]) if row.get("metrics") is not None else None
    row["details"] = parse_details(row.get("details"))
    ids = row.pop("instruction_id_list")
    strict = row.pop("inst_level_strict")
    loose = row.pop("inst_level_loose")
    if ids is not None:
        kwargs = doc.get("kwargs") or [None] * len(ids)
        row["instructions"] = [
            {"id": i, "strict": s, "loose": lo, "kwargs": k}
            for i, s, lo, k in zip(ids, strict, loose, kwargs, strict=False)
        ]
    elif doc.get("instruction_id_list"):
        row["instructions"] = [
            {"id": i, "strict": None, "loose": None, "kwargs": k}
            for i, k in zip(doc["instruction_id_list"], doc.get("kwargs", []), strict=False)
        ]
    else:
        row["instructions"] = None
    return row


def parse_details(text: str | None) -> Any:
    """A score row's ``details`` JSON (whatever its task's scorer put there), or the
    text itself when it is not JSON; None when absent."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_doc(text: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def export_batches(store: Store, run_id: str, tasks: list[str]) -> Iterator[pa.Table]:
    """A run's samples with verdicts, one table per shard, in EXPORT_SCHEMA."""
    for task in tasks:
        state = store.task_state(run_id, task)
        for ref in state.live:
            table = shard_samples(store, ref, ref.name in state.scored)
            rows = table.num_rows
            columns = {}
            for field in EXPORT_SCHEMA:
                if field.name == "run_id":
                    columns[field.name] = pa.array([run_id] * rows, field.type)
                elif field.name == "task":
                    columns[field.name] = pa.array([task] * rows, field.type)
                elif field.name in table.column_names:
                    columns[field.name] = table.column(field.name).cast(field.type)
                else:
                    columns[field.name] = pa.nulls(rows, field.type)
            yield pa.table(columns, schema=EXPORT_SCHEMA)


def shard_state(store: Store) -> dict[str, Any]:
    """Counts of generation shards by state over the whole store, and handoff latencies
    (a score shard's mtime minus its generation shard's), for /metrics."""
    pending = scored = quarantined = 0
    latencies: list[float] = []
    for run_id in store.list_runs():
        for task in store.list_tasks(run_id, GENERATIONS):
            state = store.task_state(run_id, task)
            quarantined += len(state.quarantined)
            pending += len(state.pending)
            for name, made in state.generated.items():
                done = state.scored.get(name)
                if done is not None:
                    scored += 1
                    latencies.append(max(0.0, (done.mtime_ns - made.mtime_ns) / 1e9))
    return {
        "pending": pending,
        "scored": scored,
        "quarantined": quarantined,
        "latencies": latencies,
    }
