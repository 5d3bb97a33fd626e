"""The results endpoint: ``tandem serve --store URI`` (FastAPI), read-only over a store.

Routes: ``/runs`` (paginated, filter by model and task), ``/runs/{id}`` (spec,
environment, telemetry), ``/runs/{id}/scores``, ``/runs/{id}/samples``,
``/runs/{id}/export``, ``/compare``, ``/healthz``, ``/metrics`` (Prometheus) and an HTML
page at ``/``. The app never writes to the store.

Security: run ids and task names are validated by pattern before any path is built
(``Store.run_path`` checks again), so no request reaches outside ``runs/<id>/``; page
sizes are capped; no CORS headers are sent, so other origins' scripts cannot read
results; and a bearer token, when set, is required on every data route. ``run()``
refuses to bind to a non-loopback address without one.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import secrets
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from cpu_scorer import _queries
from cpu_scorer._page import PAGE
from cpu_scorer.compare import compare_runs
from cpu_scorer.scoring import compute_summary
from shared.errors import TandemError
from shared.store import Store, check_run_id, check_task

MAX_PAGE = 500  # rows or runs per page
# RUN_ID_PATTERN and TASK_PATTERN without "..", written without look-ahead (pydantic's
# regex engine has none) so the OpenAPI schema states exactly what is accepted: each
# dot is followed by another allowed character or ends the name.
_RUN_ID = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
_TASK = r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*\.?$"
# Documented so clients (and schemathesis) know every status a route can answer.
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid run id or task name"},
    401: {"description": "Missing or wrong bearer token"},
    404: {"description": "No such run, or no such task in the run"},
    503: {"description": "The store cannot be read"},
}
# Headline metric per task kind, for the run list and the chart.
HEADLINE = (
    "prompt_level_strict_acc",
    "acc_norm",
    "acc",
    "word_perplexity",
    "token_perplexity",
)


class Settings(BaseModel):
    """What the app serves and who may read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_uri: str
    token: str | None = None


def get_settings(request: Request) -> Settings:
    """The app's settings (a dependency: tests override it)."""
    return request.app.state.settings


@lru_cache(maxsize=8)
def _open_store(uri: str) -> Store:
    return Store(uri)


def get_store(settings: Annotated[Settings, Depends(get_settings)]) -> Store:
    return _open_store(settings.store_uri)


_bearer = HTTPBearer(auto_error=False, description="Required when the server has a token")


def _verify(settings: Settings, given: str | None) -> None:
    if settings.token is None:
        return
    if not secrets.compare_digest((given or "").encode(), settings.token.encode()):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def authorize(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer check, declared in the OpenAPI schema (apps created with a token)."""
    _verify(settings, credentials.credentials if credentials else None)


def authorize_if_set(
    settings: Annotated[Settings, Depends(get_settings)], request: Request
) -> None:
    """The same check for apps created without a token: undeclared in the schema (the
    routes are open), yet still enforced should overridden settings carry a token."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    _verify(settings, value.strip() if scheme.lower() == "bearer" else None)


StoreDep = Annotated[Store, Depends(get_store)]
RunId = Annotated[str, Path(pattern=_RUN_ID, max_length=128, description="run id")]
TaskName = Annotated[str | None, Query(pattern=_TASK, max_length=64)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]

# run.json is written once, so it is cached for good (bounded).
_RECORDS: dict[tuple[str, str], dict[str, Any]] = {}
_RECORDS_LOCK = threading.Lock()
_SAMPLES = _queries.SampleCache(capacity=16)


def _record(store: Store, run_id: str) -> dict[str, Any]:
    key = (store.uri, run_id)
    with _RECORDS_LOCK:
        if key in _RECORDS:
            return _RECORDS[key]
    record = _queries.require_run(store, check_run_id(run_id))
    with _RECORDS_LOCK:
        if len(_RECORDS) > 10_000:
            _RECORDS.clear()
        _RECORDS[key] = record
    return record


def _summary(store: Store, run_id: str) -> dict[str, Any] | None:
    path = store.run_path(run_id, "summary.json")
    try:
        return store.read_json(path)
    except TandemError:
        return None


def _headlines(summary: dict[str, Any] | None) -> dict[str, Any]:
    out = {}
    for task, entry in (summary or {}).get("tasks", {}).items():
        metrics = entry.get("metrics", {})
        for name in HEADLINE:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[task] = {"metric": name, "value": value, "complete": entry.get("complete")}
                break
    return out


def _run_entry(run_id: str, record: dict[str, Any], summary: dict[str, Any] | None) -> dict:
    spec = record.get("spec", {})
    return {
        "run_id": run_id,
        "created_at": record.get("created_at"),
        "model": spec.get("model"),
        "model_id": record.get("model", {}).get("model_id"),
        "adapter": spec.get("adapter"),
        "precision": spec.get("precision"),
        "backend": spec.get("backend"),
        "tasks": list(spec.get("tasks", record.get("tasks", {}))),
        "scores": _headlines(summary),
    }


def _tasks_of(store: Store, run_id: str, record: dict[str, Any]) -> list[str]:
    return sorted(set(record.get("tasks", {})) | set(store.list_tasks(run_id, "generations")))


def _check_task_in(store: Store, run_id: str, record: dict[str, Any], task: str | None) -> str:
    tasks = _tasks_of(store, run_id, record)
    if task is None:
        if not tasks:
            raise _queries.RunNotFound(f"run {run_id!r} has no tasks")
        return tasks[0]
    check_task(task)
    if task not in tasks:
        raise _queries.RunNotFound(f"run {run_id!r} has no task {task!r}; it has {tasks}")
    return task


def _metrics_text(store: Store) -> str:
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


class _Chunks:
    """A write-only file whose contents are handed out as they are written, so a
    Parquet export streams row group by row group instead of building in memory."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _stream_parquet(batches: Iterator[pa.Table]) -> Iterator[bytes]:
    sink = _Chunks()
    with pq.ParquetWriter(
        pa.PythonFile(sink, mode="w"), _queries.EXPORT_SCHEMA, compression="zstd"
    ) as writer:
        for batch in batches:
            writer.write_table(batch)
            yield sink.take()
    yield sink.take()


def _stream_jsonl(batches: Iterator[pa.Table]) -> Iterator[bytes]:
    for batch in batches:
        rows = batch.to_pylist()
        for row in rows:
            row["metrics"] = dict(row["metrics"]) if row["metrics"] is not None else None
        yield "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


# ---- the app ---------------------------------------------------------------------------
def create_app(store_uri: str, token: str | None = None) -> FastAPI:
    """The results app over the store at ``store_uri``; ``token`` requires a bearer."""
    app = FastAPI(
        title="tandem results",
        version="1",
        description="Read-only results of tandem evaluation runs.",
    )
    app.state.settings = Settings(store_uri=store_uri, token=token or None)

    @app.exception_handler(_queries.RunNotFound)
    def _not_found(_request: Request, error: _queries.RunNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(TandemError)
    def _bad_request(_request: Request, error: TandemError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(OSError)
    def _unavailable(_request: Request, error: OSError) -> JSONResponse:
        return JSONResponse({"detail": f"store unavailable: {error}"}, status_code=503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(
            PAGE,
            headers={
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/healthz", responses={503: _ERRORS[503]})
    def healthz(store: StoreDep) -> dict[str, Any]:
        """Liveness and store reachability."""
        store.list_dirs(store.path("runs"))
        return {"status": "ok"}

    # Without a token the routes are open, and the OpenAPI schema says so (no security
    # scheme); with one, every data route requires it.
    token_set = app.state.settings.token is not None
    guard = Depends(authorize) if token_set else Depends(authorize_if_set)
    errors = _ERRORS if token_set else {k: v for k, v in _ERRORS.items() if k != 401}
    data = APIRouter(dependencies=[guard], responses=errors)

    @data.get("/runs")
    def list_runs(
        store: StoreDep,
        model: Annotated[str | None, Query(max_length=200)] = None,
        task: TaskName = None,
        offset: Offset = 0,
        limit: Limit = 50,
    ) -> dict[str, Any]:
        """Runs, oldest first; ``model`` matches a substring of the model or its id."""
        entries = []
        for run_id in store.list_runs():
            record = _record(store, run_id)
            entry = _run_entry(run_id, record, None)
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
            entry["scores"] = _headlines(_summary(store, entry["run_id"]))
        return {"runs": page, "total": len(entries), "offset": offset, "limit": limit}

    @data.get("/runs/{run_id}")
    def get_run(store: StoreDep, run_id: RunId) -> dict[str, Any]:
        """run.json (spec, model, environment) plus per-task telemetry and shard counts."""
        record = dict(_record(store, run_id))
        summary = _summary(store, run_id) or {}
        record["telemetry"] = {
            t: e.get("telemetry", {}) for t, e in summary.get("tasks", {}).items()
        }
        record["shards"] = {t: e.get("shards", {}) for t, e in summary.get("tasks", {}).items()}
        return record

    @data.get("/runs/{run_id}/scores")
    def get_scores(store: StoreDep, run_id: RunId) -> dict[str, Any]:
        """Per-task metrics from summary.json (computed on the fly until a scorer wrote it)."""
        _record(store, run_id)
        summary = _summary(store, run_id)
        source = "summary.json"
        if summary is None:
            summary, source = compute_summary(store, run_id), "computed"
        return {
            "run_id": run_id,
            "source": source,
            "scorer_version": summary.get("scorer_version"),
            "tasks": summary.get("tasks", {}),
        }

    @data.get("/runs/{run_id}/samples")
    def get_samples(
        store: StoreDep,
        run_id: RunId,
        task: TaskName = None,
        failed: bool | None = None,
        offset: Offset = 0,
        limit: Limit = 50,
    ) -> dict[str, Any]:
        """Rows of one task (the first when not given) with per-instruction verdicts.
        ``failed=true``: failed or errored rows only; ``false``: passed rows only."""
        record = _record(store, run_id)
        task = _check_task_in(store, run_id, record, task)
        total, table = _SAMPLES.page(store, run_id, task, failed, offset, limit)
        rows = table.to_pylist() if table is not None else []
        return {
            "run_id": run_id,
            "task": task,
            "total": total,
            "offset": offset,
            "limit": limit,
            "rows": [_queries.row_json(r) for r in rows],
        }

    @data.get(
        "/runs/{run_id}/export",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}
        },
    )
    def export(
        store: StoreDep,
        run_id: RunId,
        format: Literal["parquet", "jsonl"] = "jsonl",
        task: TaskName = None,
    ) -> StreamingResponse:
        """Every sample of the run (or one task) with its verdicts, streamed."""
        record = _record(store, run_id)
        tasks = (
            [_check_task_in(store, run_id, record, task)]
            if task
            else _tasks_of(store, run_id, record)
        )
        batches = _queries.export_batches(store, run_id, tasks)
        name = f"{run_id}{'-' + task if task else ''}.{format}"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if format == "parquet":
            return StreamingResponse(
                _stream_parquet(batches),
                headers=headers,
                media_type="application/vnd.apache.parquet",
            )
        return StreamingResponse(
            _stream_jsonl(batches), headers=headers, media_type="application/x-ndjson"
        )

    @data.get("/compare")
    def compare(
        store: StoreDep,
        a: Annotated[str, Query(pattern=_RUN_ID, max_length=128)],
        b: Annotated[str, Query(pattern=_RUN_ID, max_length=128)],
        task: Annotated[str, Query(pattern=_TASK, max_length=64)] = "ifeval",
    ) -> dict[str, Any]:
        """Per-prompt flips of ``task`` between runs ``a`` and ``b``, with counts each
        way (the same result as ``tandem compare A B``)."""
        for run_id in (a, b):
            _check_task_in(store, run_id, _record(store, run_id), task)
        return compare_runs(store, a, b, task, cache=_SAMPLES)

    @data.get("/metrics", response_class=PlainTextResponse)
    def metrics(store: StoreDep) -> PlainTextResponse:
        """Prometheus text: shards pending, scored, quarantined; scoring latency."""
        return PlainTextResponse(
            _metrics_text(store), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    app.include_router(data)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def run(args: argparse.Namespace) -> int:
    """``tandem serve``: refuses a non-loopback address without a bearer token."""
    if not is_loopback(args.host) and not args.token:
        raise TandemError(
            f"refusing to serve on {args.host!r} without a token: anyone who can reach it "
            "could read every result. Set --token or TANDEM_TOKEN, or bind to 127.0.0.1"
        )
    import uvicorn

    Store(args.store)  # fail now, with a clear message, on a bad store URI
    uvicorn.run(
        create_app(args.store, token=args.token),
        host=args.host,
        port=args.port,
        log_level="info",
        server_header=False,
    )
    return 0
