"""summary.json: a run's numbers, a pure function of its score shards.

A ``SummaryBuilder`` reads each score shard once: what a shard contributes (its score
rows, its telemetry, its worker record) is cached under the shard's stamp (size and
mtime), so a refresh after one new score shard reads that one shard, and a shard
rewritten in place is read again. Telemetry comes from the score shard's metadata
(computed once, at scoring); only score shards written before it was recorded there
send the builder to their generation shard. A score shard that cannot be read is
reported to ``on_damaged`` (the daemon moves it aside and scores its shard again) and
left out of this summary.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from cpu_scorer._rows import SCORER_VERSION
from cpu_scorer.aggregations import AggregateOptions, aggregate_task
from cpu_scorer.scorers import shard_telemetry
from shared.errors import TandemError
from shared.records import (
    RunRecord,
    ShardCounts,
    Summary,
    TaskSummary,
    WorkerInfo,
    distinct_workers,
)
from shared.schema import extras_of, upgrade
from shared.store import GENERATIONS, SCORES, FileStamp, RunState, ShardRef, Store
from shared.tasks import TASKS

# The score columns aggregation reads.
_COLUMNS = (
    "sample_id",
    "metrics",
    "instruction_id_list",
    "inst_level_strict",
    "inst_level_loose",
    "prediction",
    "error",
)
# What makes a score shard unreadable: it is then damaged, not a scorer bug.
DAMAGE = (TandemError, pa.ArrowException, OSError, KeyError, ValueError, TypeError)


@dataclass(frozen=True)
class ShardPart:
    """What one score shard contributes to its run's summary."""

    rows: list[dict[str, Any]]
    telemetry: dict[str, Any]
    worker: WorkerInfo | None


class SummaryBuilder:
    """Summaries over a store, reading each score shard once per stamp."""

    def __init__(
        self,
        store: Store,
        options: AggregateOptions | None = None,
        on_damaged: Callable[[ShardRef, BaseException], None] | None = None,
        max_runs: int = 64,
    ):
        self.store = store
        self.options = options or AggregateOptions()
        self.on_damaged = on_damaged
        self.max_runs = max_runs
        self.reads = 0  # score and generation shards read, for tests and logs
        self._parts: OrderedDict[str, dict[tuple[str, str], tuple[FileStamp, ShardPart]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def build(self, record: RunRecord, state: RunState) -> Summary:
        """The summary of ``record``'s run as ``state`` lists it."""
        run_id = record.run_id
        with self._lock:
            cached = self._parts.pop(run_id, {})
        fresh: dict[tuple[str, str], tuple[FileStamp, ShardPart]] = {}
        tasks: dict[str, TaskSummary] = {}
        workers: list[WorkerInfo] = []
        for task_name in sorted(set(record.tasks) | set(state.tasks)):
            task_state = state.tasks.get(task_name)
            parts = []
            for name, stamp in sorted((task_state.scored if task_state else {}).items()):
                key = (task_name, name)
                hit = cached.get(key)
                part: ShardPart | None
                if hit is not None and hit[0] == stamp:
                    part = hit[1]
                else:
                    part = self._read_part(task_state.ref(name)) if task_state else None
                if part is None:
                    continue
                fresh[key] = (stamp, part)
                parts.append(part)
            workers += [p.worker for p in parts if p.worker is not None]
            tasks[task_name] = self._task_summary(task_name, record, task_state, parts)
        with self._lock:
            self._parts[run_id] = fresh
            while len(self._parts) > self.max_runs:
                self._parts.popitem(last=False)
        workers = distinct_workers(workers or record.workers)
        return Summary(
            run_id=run_id,
            model=record.model.model_id or None,
            precision=_joined(w.precision for w in workers) or record.resolved_precision or None,
            requested_precision=record.requested_precision or None,
            workers=workers,
            scorer_version=SCORER_VERSION,
            tasks=tasks,
        )

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._parts.pop(run_id, None)

    def _read_part(self, ref: ShardRef) -> ShardPart | None:
        path = self.store.shard_path(SCORES, ref)
        try:
            self.reads += 1
            _, table = upgrade(self.store.read_table(path))
            rows = table.select(list(_COLUMNS)).to_pylist()
            extras = extras_of(table)
            telemetry = (
                json.loads(extras["telemetry"])
                if "telemetry" in extras
                else self._generation_telemetry(ref)
            )
            worker = (
                WorkerInfo.model_validate_json(extras["worker"]) if "worker" in extras else None
            )
        except FileNotFoundError:
            return None  # moved aside meanwhile
        except DAMAGE as error:
            if self.on_damaged is None:
                raise TandemError(
                    f"score shard {self.store.relative(path)} is damaged ({error}); a scorer "
                    "will move it aside and score its generation shard again"
                ) from error
            self.on_damaged(ref, error)
            return None
        return ShardPart(rows, telemetry, worker)

    def _generation_telemetry(self, ref: ShardRef) -> dict[str, Any]:
        """Telemetry of a score shard written before score shards carried it."""
        try:
            self.reads += 1
            return shard_telemetry(self.store.read_table(self.store.shard_path(GENERATIONS, ref)))
        except (pa.ArrowException, OSError):
            return {"samples": 0, "model_seconds": 0.0}

    def _task_summary(
        self, task_name: str, record: RunRecord, state: Any, parts: list[ShardPart]
    ) -> TaskSummary:
        rows = [row for part in parts for row in part.rows]
        task = TASKS.get(task_name)
        notes: list[str] = []
        if task is not None:
            aggregate, scored, failed = aggregate_task(task, rows, self.options)
            metrics, notes = aggregate.metrics, aggregate.notes
        else:
            metrics, scored = {}, 0
            failed = sum(1 for r in rows if r["error"])
            scored = len(rows) - failed
        plan = record.tasks.get(task_name)
        total = plan.samples if plan else None
        generated, scored_shards, quarantined = state.counts if state else (0, 0, 0)
        return TaskSummary(
            metrics=metrics,
            headline=task.headline if task else None,
            samples_scored=scored,
            samples_failed=failed,
            samples_total=total,
            notes=notes,
            shards=ShardCounts(generated=generated, scored=scored_shards, quarantined=quarantined),
            telemetry=_telemetry([p.telemetry for p in parts]),
            complete=total is not None and scored + failed == total,
        )


def _joined(values: Any) -> str:
    seen: list[str] = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return ", ".join(seen)


def _telemetry(parts: list[dict[str, Any]]) -> dict[str, Any]:
    samples = sum(int(p.get("samples", 0)) for p in parts)
    seconds = sum(float(p.get("model_seconds", 0.0)) for p in parts)
    eos = sum(int(p.get("eos_tokens", 0)) for p in parts)
    # Text tokens: what was generated, the EOS that ended a row not counted.
    tokens = sum(int(p.get("generated_tokens", 0)) for p in parts) - eos
    requests = sum(int(p.get("requests", 0)) for p in parts)
    scored = sum(int(p.get("scored_tokens", 0)) for p in parts)
    telemetry: dict[str, Any] = {
        "samples_generated": samples,
        "model_seconds": round(seconds, 3),
        "prompt_tokens": sum(int(p.get("prompt_tokens", 0)) for p in parts),
    }
    if tokens > 0:
        telemetry["generated_tokens"] = tokens
        telemetry["eos_tokens"] = eos
        telemetry["tokens_per_second"] = round(tokens / seconds, 2) if seconds else None
    if requests:
        # Log-likelihood tasks: requests (one per choice) and the tokens they score.
        telemetry["requests"] = requests
        telemetry["scored_tokens"] = scored
        if seconds:
            telemetry["requests_per_second"] = round(requests / seconds, 2)
            telemetry["scored_tokens_per_second"] = round(scored / seconds, 1)
    if samples and seconds:
        telemetry["samples_per_second"] = round(samples / seconds, 3)
    telemetry.update(_worker_telemetry([p["worker"] for p in parts if p.get("worker")]))
    return telemetry


def _worker_telemetry(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' own measurements over a task's shards: seconds summed, the decode
    rate over the shards that split prefill from decode, peaks as maxima."""
    if not shards:
        return {}

    def total(key: str) -> float | None:
        values = [float(s[key]) for s in shards if s.get(key) is not None]
        return round(sum(values), 3) if values else None

    def peak(key: str) -> int | None:
        values = [int(s[key]) for s in shards if s.get(key) is not None]
        return max(values) if values else None

    decode = total("decode_seconds")
    decoded = sum(int(s.get("generated_tokens") or 0) for s in shards if s.get("decode_seconds"))
    batches = sum(int(s.get("batches") or 0) for s in shards)
    weighted = sum(
        float(s["batch_size_mean"]) * int(s.get("batches") or 0)
        for s in shards
        if s.get("batch_size_mean") is not None
    )
    return {
        "worker_shards": len(shards),
        "worker_seconds": total("seconds"),
        "prefill_seconds": total("prefill_seconds"),
        "decode_seconds": decode,
        "decode_tokens_per_second": round(decoded / decode, 2) if decoded and decode else None,
        "batches": batches,
        "batch_size_mean": round(weighted / batches, 2) if batches else None,
        "batch_size_max": peak("batch_size_max"),
        "peak_rss_bytes": peak("peak_rss_bytes"),
        "cuda_max_allocated_bytes": peak("cuda_max_allocated_bytes"),
    }


def compute_summary(store: Store, run_id: str, options: AggregateOptions | None = None) -> Summary:
    """One run's summary from scratch (no cache); a damaged score shard raises."""
    record = store.run_record(run_id)
    state = store.run_state(run_id, extra_tasks=tuple(record.tasks))
    return SummaryBuilder(store, options).build(record, state)
