"""Worker telemetry: measured per generation shard (Parquet metadata), carried by the
scorer into the score shard, summed per task in summary.json and served by the API."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from cpu_scorer.api import create_app
from shared.records import WorkerTelemetry
from shared.schema import extras_of


def _measured(path: Path) -> dict:
    return json.loads(extras_of(pq.read_schema(path))["worker_telemetry"])


def test_generation_shards_record_what_the_worker_measured(scored_store: Path) -> None:
    shards = sorted((scored_store / "runs/run-a/generations/ifeval").glob("*.parquet"))
    for path in shards:
        measured = WorkerTelemetry.model_validate(_measured(path))
        rows = pq.read_table(path).to_pylist()
        assert measured.generated_tokens == sum(r["generated_tokens"] for r in rows)
        assert measured.prompt_tokens == sum(r["prompt_tokens"] for r in rows)
        # The fake backend gets one generate call per shard: one batch of every row.
        assert measured.batches == 1 and measured.batch_size_max == len(rows)
        assert measured.peak_rss_bytes and measured.peak_rss_bytes > 0
        assert measured.prefill_seconds == 0.0 and measured.decode_seconds == 0.0
        assert measured.cuda_max_allocated_bytes is None  # no GPU
    # Multiple choice: one loglikelihood call of every choice of every row.
    path = sorted((scored_store / "runs/run-a/generations/tinymmlu").glob("*.parquet"))[0]
    rows = pq.read_table(path).to_pylist()
    assert _measured(path)["batch_size_max"] == sum(len(r["choices"]) for r in rows)


def test_score_shards_carry_it_and_the_summary_sums_it(scored_store: Path) -> None:
    run = scored_store / "runs/run-a"
    for path in sorted((run / "scores/ifeval").glob("*.parquet")):
        telemetry = json.loads(extras_of(pq.read_schema(path))["telemetry"])
        generation = run / "generations/ifeval" / path.name
        assert (
            telemetry["worker"]
            == WorkerTelemetry.model_validate(_measured(generation)).model_dump()
        )
    summary = json.loads((run / "summary.json").read_text())
    ifeval = summary["tasks"]["ifeval"]["telemetry"]
    shards = sorted((run / "generations/ifeval").glob("*.parquet"))
    measured = [_measured(p) for p in shards]
    assert ifeval["worker_shards"] == len(shards)
    assert ifeval["batches"] == sum(m["batches"] for m in measured)
    assert ifeval["batch_size_max"] == max(m["batch_size_max"] for m in measured)
    assert ifeval["peak_rss_bytes"] == max(m["peak_rss_bytes"] for m in measured)
    assert ifeval["cuda_max_allocated_bytes"] is None
    with TestClient(create_app(str(scored_store))) as client:
        served = client.get("/runs/run-a").json()["telemetry"]["ifeval"]
    assert served == ifeval
