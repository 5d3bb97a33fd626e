"""The data routes: runs, one run, its scores, samples and export, compare, metrics."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from cpu_scorer import _queries, _samples, _sweeps
from cpu_scorer.api._deps import (
    RUN_ID_REGEX,
    TASK_REGEX,
    Limit,
    Offset,
    RecordsDep,
    RunId,
    RunIdQuery,
    SamplesDep,
    StoreDep,
    TaskName,
)
from cpu_scorer.api._stream import stream_jsonl, stream_parquet
from cpu_scorer.compare import compare_runs, paired_tests
from cpu_scorer.summary import compute_summary
from shared.errors import TandemError
from shared.records import RunRecord, Summary
from shared.store import GENERATIONS, Store, check_task
from shared.tasks import TASKS

router = APIRouter()


def _headlines(summary: Summary | None) -> dict[str, Any]:
    """Per task: its headline metric (the one its definition names) and value."""
    out = {}
    for task, entry in (summary.tasks if summary else {}).items():
        name = entry.headline or (TASKS[task].headline if task in TASKS else None)
        value = entry.metrics.get(name) if name else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[task] = {"metric": name, "value": value, "complete": entry.complete}
    return out


def _run_entry(run_id: str, record: RunRecord) -> dict[str, Any]:
    spec = record.spec
    return {
        "run_id": run_id,
        "created_at": record.created_at or None,
        "model": spec.get("model"),
        "model_id": record.model.model_id or None,
        "adapter": spec.get("adapter"),
        "precision": record.resolved_precision or None,
        "requested_precision": record.requested_precision or None,
        "backend": spec.get("backend"),
        "tasks": list(spec.get("tasks") or record.tasks),
        "sweep": _sweeps.sweep_of(record)[0],
        "step": _sweeps.sweep_of(record)[1],
        "scores": {},
        "error": None,
    }


def _damaged_entry(run_id: str, error: TandemError) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "created_at": None,
        "model": None,
        "model_id": None,
        "adapter": None,
        "precision": None,
        "requested_precision": None,
        "backend": None,
        "tasks": [],
        "sweep": None,
        "step": None,
        "scores": {},
        "error": str(error),
    }


def _tasks_of(store: Store, run_id: str, record: RunRecord) -> list[str]:
    return sorted(set(record.tasks) | set(store.list_tasks(run_id, GENERATIONS)))


def _check_task_in(store: Store, run_id: str, record: RunRecord, task: str | None) -> str:
    tasks = _tasks_of(store, run_id, record)
    if task is None:
        if not tasks:
            raise _queries.RunNotFound(f"run {run_id!r} has no tasks")
        return tasks[0]
    check_task(task)
    if task not in tasks:
        raise _queries.RunNotFound(f"run {run_id!r} has no task {task!r}; it has {tasks}")
    return task


@router.get("/runs")
def list_runs(
    store: StoreDep,
    records: RecordsDep,
    model: Annotated[str | None, Query(max_length=200)] = None,
    task: TaskName = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Runs, oldest first; ``model`` matches a substring of the model or its id. A run
    whose run.json cannot be read is listed with ``error`` saying why."""
    entries = []
    for run_id in store.list_runs():
        try:
            record = records.record(store, run_id)
        except _queries.RunNotFound:
            continue  # deleted since the listing
        except _queries.Damaged as error:
            if not model and not task:
                entries.append(_damaged_entry(run_id, error))
            continue
        entry = _run_entry(run_id, record)
        if model and not any(
            model.lower() in str(entry.get(k) or "").lower() for k in ("model", "model_id")
        ):
            continue
        if task and task not in entry["tasks"]:
            continue
        entries.append(entry)
    entries.sort(key=lambda e: (e["created_at"] or "", e["run_id"]))
    page = entries[offset : offset + limit]
    for entry in page:
        if entry["error"] is None:
            summary = records.summary(store, entry["run_id"])
            entry["scores"] = _headlines(summary)
            if summary is not None and summary.precision:
                entry["precision"] = summary.precision
    return {"runs": page, "total": len(entries), "offset": offset, "limit": limit}


@router.get("/runs/{run_id}")
def get_run(store: StoreDep, records: RecordsDep, run_id: RunId) -> dict[str, Any]:
    """run.json (spec, model, driver environment, workers) plus what the workers
    resolved, per-task telemetry and shard counts from the summary, and the profile
    (``tandem profile``) or null."""
    record = records.record(store, run_id)
    summary = records.summary(store, run_id)
    body = record.as_json()
    tasks = summary.tasks if summary else {}
    body["resolved"] = {
        "precision": (summary.precision if summary else None) or record.resolved_precision,
        "workers": [
            w.model_dump(mode="json") for w in (summary.workers if summary else record.workers)
        ],
    }
    body["telemetry"] = {t: e.telemetry for t, e in tasks.items()}
    body["shards"] = {t: e.shards.model_dump(mode="json") for t, e in tasks.items()}
    profile = records.profile(store, run_id)
    body["profile"] = profile.as_json() if profile is not None else None
    return body


@router.get("/runs/{run_id}/scores")
def get_scores(store: StoreDep, records: RecordsDep, run_id: RunId) -> dict[str, Any]:
    """Per-task metrics from summary.json (computed on the fly until a scorer wrote it)."""
    records.record(store, run_id)
    summary = records.summary(store, run_id)
    source = "summary.json"
    if summary is None:
        try:
            summary, source = compute_summary(store, run_id), "computed"
        except _queries.RunNotFound:
            raise
        except TandemError as error:
            raise _queries.Damaged(str(error)) from error
    body = summary.as_json()
    return {
        "run_id": run_id,
        "source": source,
        "scorer_version": body["scorer_version"],
        "precision": body["precision"],
        "tasks": body["tasks"],
        # Per task, its metrics in the order its definition declares them (headline
        # first): the order a reader expects, where the summary's keys are sorted.
        "metric_order": {
            task: _metric_order(task, entry.headline) for task, entry in summary.tasks.items()
        },
    }


def _metric_order(task: str, headline: str | None) -> list[str]:
    names = [m.name for m in TASKS[task].metrics] if task in TASKS else []
    if headline in names:
        names.remove(headline)
    return ([headline] if headline else []) + names


@router.get("/runs/{run_id}/samples")
def get_samples(
    store: StoreDep,
    records: RecordsDep,
    samples: SamplesDep,
    run_id: RunId,
    task: TaskName = None,
    failed: bool | None = None,
    instruction: Annotated[str | None, Query(max_length=100)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Rows of one task (the first when not given) with per-instruction verdicts, paged
    on the server. ``failed=true``: failed or errored rows only; ``false``: passed rows
    only. ``instruction``: IFEval rows with that instruction id (with ``failed``, that
    instruction failed, or passed). ``q``: a case-insensitive substring of the prompt or
    response, or a sample id."""
    record = records.record(store, run_id)
    task = _check_task_in(store, run_id, record, task)
    total, rows = _samples.page(
        samples,
        store,
        run_id,
        task,
        failed=failed,
        instruction=instruction or None,
        text=q or None,
        offset=offset,
        limit=limit,
    )
    return {
        "run_id": run_id,
        "task": task,
        "total": total,
        "offset": offset,
        "limit": limit,
        "rows": rows,
    }


@router.get("/runs/{run_id}/sample")
def get_sample(
    store: StoreDep,
    records: RecordsDep,
    samples: SamplesDep,
    run_id: RunId,
    id: Annotated[str, Query(min_length=1, max_length=200, description="the sample id")],
    task: TaskName = None,
) -> dict[str, Any]:
    """One sample in full: the prompt as given and as rendered, the response, each IFEval
    instruction's strict and loose verdict, each choice's log-likelihood and which won,
    and the scorer's details (e.g. the extracted answer and the target)."""
    record = records.record(store, run_id)
    task = _check_task_in(store, run_id, record, task)
    return _samples.sample(samples, store, run_id, task, id)


@router.get(
    "/runs/{run_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}
    },
)
def export(
    store: StoreDep,
    records: RecordsDep,
    run_id: RunId,
    format: Literal["parquet", "jsonl"] = "jsonl",
    task: TaskName = None,
) -> StreamingResponse:
    """Every sample of the run (or one task) with its verdicts, streamed. A shard that
    turns out damaged mid-stream ends the stream early (the status was already sent)."""
    record = records.record(store, run_id)
    tasks = (
        [_check_task_in(store, run_id, record, task)] if task else _tasks_of(store, run_id, record)
    )
    batches = _queries.export_batches(store, run_id, tasks)
    first = next(batches, None)  # a damaged first shard still answers 503, not 200

    def all_batches() -> Any:
        if first is not None:
            yield first
            yield from batches

    name = f"{run_id}{'-' + task if task else ''}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "parquet":
        return StreamingResponse(
            stream_parquet(all_batches()),
            headers=headers,
            media_type="application/vnd.apache.parquet",
        )
    return StreamingResponse(
        stream_jsonl(all_batches()), headers=headers, media_type="application/x-ndjson"
    )


_NOT_PAIRED: dict[int | str, dict[str, Any]] = {
    409: {"description": "The two runs do not cover the same samples of the task"}
}


@router.get("/compare", response_model=dict[str, Any], responses=_NOT_PAIRED)
def compare(
    store: StoreDep,
    records: RecordsDep,
    samples: SamplesDep,
    a: RunIdQuery,
    b: RunIdQuery,
    task: Annotated[str, Query(pattern=TASK_REGEX, max_length=64)] = "ifeval",
) -> JSONResponse:
    """Per-prompt flips of ``task`` between runs ``a`` and ``b``, with counts each
    way and the paired test (bootstrap interval, McNemar): the same result as
    ``tandem compare A B --json``. 409 when the runs do not cover the same samples."""
    for run_id in (a, b):
        _check_task_in(store, run_id, records.record(store, run_id), task)
    # Plain JSON values: returned as they are, not walked by FastAPI's encoder (which
    # took as long as the compare itself for thousands of flips).
    return JSONResponse(compare_runs(store, a, b, task, cache=samples))


@router.get("/compare/tests")
def compare_tests(
    store: StoreDep, samples: SamplesDep, a: RunIdQuery, b: RunIdQuery
) -> dict[str, Any]:
    """The paired test of every task both runs have (``error`` on a task says why it
    has none, e.g. the runs do not cover the same samples)."""
    return paired_tests(store, a, b, cache=samples)


@router.get("/sweeps")
def list_sweeps(store: StoreDep, records: RecordsDep) -> dict[str, Any]:
    """Sweeps: runs whose specs share a ``sweep`` name, with how many carry a ``step``."""
    return {"sweeps": _sweeps.list_sweeps(store, records)}


@router.get("/sweeps/{sweep}")
def get_sweep(
    store: StoreDep,
    records: RecordsDep,
    sweep: Annotated[str, PathParam(pattern=RUN_ID_REGEX, max_length=128)],
) -> dict[str, Any]:
    """One sweep's runs in step order, each with its numeric metrics and their stderr
    per task: the points of the curves of metrics against step."""
    return {"sweep": sweep, "points": _sweeps.sweep_points(store, records, sweep)}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(store: StoreDep) -> PlainTextResponse:
    """Prometheus text: shards pending, scored, quarantined; scoring latency."""
    return PlainTextResponse(
        metrics_text(store), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def metrics_text(store: Store) -> str:
    state = _queries.shard_state(store)
    latencies = sorted(state["latencies"])
    lines = [
        "# HELP tandem_runs Runs in the store.",
        "# TYPE tandem_runs gauge",
        f"tandem_runs {len(store.list_runs())}",
    ]
    for name, help_text in (
        ("pending", "Generation shards waiting for a scorer."),
        ("scored", "Generation shards with a published score shard."),
        ("quarantined", "Shards moved to quarantine/ because they could not be read."),
    ):
        lines += [
            f"# HELP tandem_shards_{name} {help_text}",
            f"# TYPE tandem_shards_{name} gauge",
            f"tandem_shards_{name} {state[name]}",
        ]
    lines += [
        "# HELP tandem_scoring_latency_seconds Time from a generation shard's publish to "
        "its score shard's publish (file modification times).",
        "# TYPE tandem_scoring_latency_seconds summary",
    ]
    for quantile in (0.5, 0.9, 0.99):
        value = (
            latencies[min(len(latencies) - 1, int(quantile * len(latencies)))]
            if latencies
            else float("nan")
        )
        lines.append(f'tandem_scoring_latency_seconds{{quantile="{quantile}"}} {value:.6g}')
    lines.append(f"tandem_scoring_latency_seconds_sum {sum(latencies):.6g}")
    lines.append(f"tandem_scoring_latency_seconds_count {len(latencies)}")
    return "\n".join(lines) + "\n"
