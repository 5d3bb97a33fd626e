"""summary.json: MRPC's f1 from score rows equals f1 over the generation shards' argmax."""

from __future__ import annotations

from cpu_scorer import multiple_choice
from cpu_scorer.scoring import score_store
from gpu_worker.job import run_generation
from shared.spec import RunSpec
from shared.store import Store


def test_mrpc_summary_reports_f1(tmp_path, data_dir):
    spec = RunSpec(
        run_id="mrpc", backend="fake", tasks=("mrpc",), limit={"mrpc": 40}, data_dir=str(data_dir)
    )
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    score_store(store, "mrpc", progress=False)
    rows = []
    for ref in store.list_shards("mrpc", "generations", "mrpc"):
        rows += store.read_table(store.shard_path("generations", ref)).to_pylist()
    predictions = [
        max(range(len(r["logprobs"])), key=lambda i: (r["logprobs"][i], -i)) for r in rows
    ]
    expected = multiple_choice.f1(predictions, [r["gold"] for r in rows])
    summary = store.read_json(store.run_path("mrpc", "summary.json"))
    assert summary["tasks"]["mrpc"]["metrics"]["f1"] == expected
    assert 0.0 < expected < 1.0


def test_telemetry_counts_a_multiple_choice_row_as_one_request_per_choice(tmp_path, data_dir):
    """Choice rows carry their forward's wall time and how many requests it served
    (one per choice): 10 four-choice samples in one 8 s forward of 40 requests are
    8 s of model time, 1.25 samples/s -- not 2 s, as dividing by 40 per row would say."""
    import pyarrow as pa

    spec = RunSpec(
        run_id="mc",
        backend="fake",
        tasks=("arc_easy",),
        limit={"arc_easy": 10},
        shard_size=10,
        data_dir=str(data_dir),
    )
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    (ref,) = store.list_shards("mc", "generations", "arc_easy")
    path = store.shard_path("generations", ref)
    table = store.read_table(path)
    requests = sum(len(c) for c in table.column("choices").to_pylist())
    assert requests == 40  # ARC-Easy's first ten items have four choices each
    table = table.set_column(
        table.column_names.index("batch_seconds"),
        "batch_seconds",
        pa.array([8.0] * table.num_rows, pa.float64()),
    )
    table = table.set_column(
        table.column_names.index("batch_size"),
        "batch_size",
        pa.array([requests] * table.num_rows, pa.int32()),
    )
    store.publish_table(path, table)
    score_store(store, "mc", progress=False)
    telemetry = store.read_json(store.run_path("mc", "summary.json"))["tasks"]["arc_easy"][
        "telemetry"
    ]
    assert telemetry["model_seconds"] == 8.0
    assert telemetry["samples_per_second"] == 1.25
