"""Read-side queries over a run store for the HTTP API and ``tandem compare``.

Samples are read with pyarrow, shard by shard: a score shard has the name and the row
order of its generation shard, so the two are put side by side without a join. A task
index (which shard and row holds each sample, and whether it passed) is built from a
few small columns and cached under the exact list of shard names it was built from (a
new shard changes the list, and so the key); a page then reads only the one or two
shards it shows. Shards are immutable, so whole shards are cached too. Listing a
task's folders is all a warm request costs: a page of a 10,000-sample run answers in a
few milliseconds warm and well under 100 ms cold.
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shared.errors import TandemError
from shared.schema import schema_of, upgrade
from shared.store import ShardRef, Store

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


def require_run(store: Store, run_id: str) -> dict[str, Any]:
    path = store.run_path(run_id, "run.json")
    if not store.exists(path):
        raise RunNotFound(f"no run {run_id!r} in this store")
    return store.read_json(path)


def task_shards(store: Store, run_id: str, task: str) -> tuple[list[ShardRef], set[str]]:
    """Generation shards of a task and the names of those already scored."""
    generated = store.list_shards(run_id, "generations", task)
    scored = {r.name for r in store.list_shards(run_id, "scores", task)}
    return generated, scored


def _passed(scores: pa.Table) -> pa.Array:
    """Per row: did the sample pass? IFEval: every instruction (strict). Multiple
    choice: acc == 1. Otherwise (perplexity) there is no pass/fail: null."""
    verdicts: list[bool | None] = []
    strict = scores.column("inst_level_strict").to_pylist()
    acc = pc.map_lookup(scores.column("metrics"), pa.scalar("acc"), "first").to_pylist()
    errors = scores.column("error").to_pylist()
    for row_strict, row_acc, error in zip(strict, acc, errors, strict=True):
        if error is not None:
            verdicts.append(False)
        elif row_strict is not None:
            verdicts.append(all(row_strict))
        elif row_acc is not None:
            verdicts.append(row_acc == 1.0)
        else:
            verdicts.append(None)
    return pa.array(verdicts, pa.bool_())


def shard_samples(store: Store, ref: ShardRef, scored: bool) -> pa.Table:
    """One generation shard with its verdicts beside it (nulls while unscored)."""
    generation = store.read_table(store.shard_path("generations", ref))
    _, generation = upgrade(generation)
    keep = ["sample_id", *[c for c in GENERATION_COLUMNS if c in generation.column_names]]
    table = generation.select(keep).append_column("gen_error", generation.column("error"))
    rows = table.num_rows
    if scored:
        _, scores = upgrade(store.read_table(store.shard_path("scores", ref)))
        if scores.column("sample_id").to_pylist() != table.column("sample_id").to_pylist():
            raise TandemError(f"{ref}: score shard rows do not match its generation shard")
        for name in SCORE_COLUMNS:
            table = table.append_column(name, scores.column(name))
        table = table.append_column("error", scores.column("error"))
        table = table.append_column("passed", _passed(scores))
    else:
        for name in SCORE_COLUMNS:
            table = table.append_column(name, pa.nulls(rows, _score_type(name)))
        table = table.append_column("error", table.column("gen_error"))
        table = table.append_column("passed", pa.nulls(rows, pa.bool_()))
    return table.append_column("scored", pa.array([scored] * rows, pa.bool_()))


def _score_type(name: str) -> pa.DataType:
    from shared.schema import SCORES

    return SCORES.field(name).type


@dataclass(frozen=True)
class TaskIndex:
    """Where each sample of a task lives (shard, row) and whether it passed: built from
    the few small columns needed, so a page reads only the shards it shows."""

    refs: tuple[ShardRef, ...]
    scored: tuple[bool, ...]
    shard: pa.Array  # int32 per sample: index into refs
    row: pa.Array  # int32 per sample: row within its shard
    passed: pa.Array  # bool or null per sample
    views: dict[bool | None, pa.Array]  # failed filter -> positions of matching samples


def _read_columns(store: Store, path: str, columns: list[str]) -> pa.Table:
    with store.fs.open_input_file(path) as handle:
        table = pq.read_table(handle, columns=columns)
    schema_of(table)  # refuse a file that is not a tandem shard
    return table


def _build_index(store: Store, refs: list[ShardRef], scored: set[str]) -> TaskIndex:
    shard_ids, rows, passed, flags = [], [], [], []
    for position, ref in enumerate(refs):
        ids = _read_columns(store, store.shard_path("generations", ref), ["sample_id"])
        count = ids.num_rows
        is_scored = ref.name in scored
        if is_scored:
            scores = _read_columns(
                store,
                store.shard_path("scores", ref),
                ["sample_id", "metrics", "inst_level_strict", "error"],
            )
            if not scores.column("sample_id").equals(ids.column("sample_id")):
                raise TandemError(f"{ref}: score shard rows do not match its generation shard")
            passed.append(_passed(scores))
        else:
            passed.append(pa.nulls(count, pa.bool_()))
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


class SampleCache:
    """Task indexes keyed by the exact shard lists they were built from, and whole
    shards (generation + verdicts) keyed by shard; both immutable once published."""

    def __init__(self, capacity: int = 16, shard_capacity: int = 128):
        self._indexes = _LRU(capacity)
        self._shards = _LRU(shard_capacity)

    def index(self, store: Store, run_id: str, task: str) -> TaskIndex:
        generated, scored = task_shards(store, run_id, task)
        if not generated:
            raise RunNotFound(f"run {run_id!r} has no generations for task {task!r}")
        key = (store.uri, run_id, task, tuple((r.name, r.name in scored) for r in generated))
        return self._indexes.get(key) or self._indexes.put(
            key, _build_index(store, generated, scored)
        )

    def shard(self, store: Store, ref: ShardRef, scored: bool) -> pa.Table:
        key = (store.uri, ref, scored)
        return self._shards.get(key) or self._shards.put(key, shard_samples(store, ref, scored))

    def page(
        self, store: Store, run_id: str, task: str, failed: bool | None, offset: int, limit: int
    ) -> tuple[int, pa.Table | None]:
        """(matching samples, the rows [offset, offset+limit) of them, in task order)."""
        index = self.index(store, run_id, task)
        positions = index.views[failed]
        chosen = positions.slice(offset, limit) if offset < len(positions) else positions[:0]
        if len(chosen) == 0:
            return len(positions), None
        shards = pc.take(index.shard, chosen).to_pylist()
        rows = pc.take(index.row, chosen).to_pylist()
        parts = []
        # Consecutive samples of one shard are taken together (a page spans 1-2 shards).
        start = 0
        for end in range(1, len(shards) + 1):
            if end == len(shards) or shards[end] != shards[start]:
                table = self.shard(store, index.refs[shards[start]], index.scored[shards[start]])
                parts.append(table.take(pa.array(rows[start:end], pa.int32())))
                start = end
        return len(positions), pa.concat_tables(parts, promote_options="permissive")

    def samples(self, store: Store, run_id: str, task: str) -> pa.Table:
        """Every sample of a task with its verdicts (compare reads them all)."""
        index = self.index(store, run_id, task)
        parts = [
            self.shard(store, ref, scored)
            for ref, scored in zip(index.refs, index.scored, strict=True)
        ]
        return pa.concat_tables(parts, promote_options="permissive")


def row_json(row: dict[str, Any]) -> dict[str, Any]:
    """A sample row for JSON: metrics as a dict, IFEval verdicts per instruction."""
    doc = _doc(row.pop("doc", None))
    row.pop("gen_error", None)
    row["metrics"] = dict(row["metrics"]) if row.get("metrics") is not None else None
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


def _doc(text: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def export_batches(store: Store, run_id: str, tasks: list[str]) -> Iterator[pa.Table]:
    """A run's samples with verdicts, one table per shard, in EXPORT_SCHEMA."""
    for task in tasks:
        generated, scored = task_shards(store, run_id, task)
        for ref in generated:
            table = shard_samples(store, ref, ref.name in scored)
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
        for task in store.list_tasks(run_id, "generations"):
            generations = _mtimes(store, store.run_path(run_id, "generations", task), ".parquet")
            scores = _mtimes(store, store.run_path(run_id, "scores", task), ".parquet")
            records = _mtimes(store, store.run_path(run_id, "quarantine", task), ".error.json")
            quarantined += len(records)
            for name, made in generations.items():
                if name in scores:
                    scored += 1
                    latencies.append(max(0.0, scores[name] - made))
                elif name not in records:
                    pending += 1
    return {
        "pending": pending,
        "scored": scored,
        "quarantined": quarantined,
        "latencies": latencies,
    }


def _mtimes(store: Store, folder: str, suffix: str) -> dict[str, float]:
    selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
    out = {}
    for info in store.fs.get_file_info(selector):
        name = info.base_name
        if info.type != pafs.FileType.File or name.startswith(".") or not name.endswith(suffix):
            continue
        out[name[: -len(suffix)]] = info.mtime.timestamp() if info.mtime else 0.0
    return out
