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
