"""What the worker resolved reaches the record: precision "auto" is never what run.json,
summary.json or the API say ran; every shard carries the worker that wrote it."""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient

from cpu_scorer.api import create_app
from cpu_scorer.scoring import score_store
from gpu_worker.job import run_generation
from shared.records import WorkerInfo
from shared.schema import extras_of
from shared.spec import RunSpec
from shared.store import Store


def test_auto_precision_is_recorded_as_what_the_worker_resolved(tmp_path, data_dir) -> None:
    spec = RunSpec(
        run_id="auto",
        backend="fake",
        tasks=("tinymmlu",),
        limit={"tinymmlu": 8},
        shard_size=4,
        data_dir=str(data_dir),
    )
    assert spec.precision == "auto"
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)

    (worker,) = store.run_record("auto").workers
    assert worker.precision == "fp32" and worker.device == "cpu"
    assert worker.host == socket.gethostname() and worker.backend == "fake"
    for ref in store.list_shards("auto", "generations", "tinymmlu"):
        extras = extras_of(store.read_schema(store.shard_path("generations", ref)))
        assert WorkerInfo.model_validate_json(extras["worker"]) == worker
        assert extras["shard"] == ref.name

    score_store(store, progress=False)
    summary = store.summary("auto")
    assert summary.precision == "fp32" and summary.requested_precision == "auto"
    assert summary.workers == [worker]

    with TestClient(create_app(str(tmp_path))) as client:
        (entry,) = client.get("/runs").json()["runs"]
        assert entry["precision"] == "fp32" and entry["requested_precision"] == "auto"
        body = client.get("/runs/auto").json()
        assert body["resolved"]["precision"] == "fp32"
        assert body["resolved"]["workers"][0]["host"] == socket.gethostname()
        assert client.get("/runs/auto/scores").json()["precision"] == "fp32"
