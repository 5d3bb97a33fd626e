"""End to end through a real Ray head on 127.0.0.1: ray job submit -> shards -> scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shared.store import Store

pytestmark = pytest.mark.slow

SPEC = """\
run_id = "e2e-ray"
tasks = ["ifeval", "tinymmlu"]
limit = {{ ifeval = 3, tinymmlu = 4 }}
shard_size = 2
data_dir = "{data}"
[generation]
max_new_tokens = 12
"""


def test_ray_job_submit_generates_and_the_scorer_scores(tmp_path, data_dir, ray_head):
    from gpu_worker.ray_local import submit_job

    spec = tmp_path / "run.toml"
    spec.write_text(SPEC.format(data=data_dir))
    store_dir = tmp_path / "store"
    tandem = str(Path(sys.executable).with_name("tandem"))
    code = submit_job(ray_head, [tandem, "generate", str(spec), "--store", str(store_dir)])
    assert code == 0

    store = Store(store_dir)
    assert [r.name for r in store.list_shards("e2e-ray", "generations", "ifeval")] == [
        "0000000-0000002",
        "0000002-0000003",
    ]
    assert len(store.list_shards("e2e-ray", "generations", "tinymmlu")) == 2
    rows = store.read_table(
        store.shard_path("generations", store.list_shards("e2e-ray", "generations", "ifeval")[0])
    ).to_pylist()
    assert all(r["response"] and r["generated_tokens"] > 0 for r in rows)
    assert all(r["rendered_prompt"].startswith("<|im_start|>") for r in rows)

    from cpu_scorer.scoring import score_store

    counts = score_store(store, "e2e-ray", progress=False)
    assert counts == {"e2e-ray": {"scored": 4, "quarantined": 0}}
    summary = json.loads((store_dir / "runs/e2e-ray/summary.json").read_text())
    ifeval = summary["tasks"]["ifeval"]
    assert ifeval["samples_scored"] == 3 and ifeval["complete"]
    assert 0.0 <= ifeval["metrics"]["prompt_level_strict_acc"] <= 1.0
    assert ifeval["telemetry"]["tokens_per_second"] > 0
    mmlu = summary["tasks"]["tinymmlu"]
    assert mmlu["samples_scored"] == 4 and "acc" in mmlu["metrics"]

    # A second submit finds every shard done and generates nothing.
    assert submit_job(ray_head, [tandem, "generate", str(spec), "--store", str(store_dir)]) == 0
    assert len(store.list_shards("e2e-ray", "generations", "ifeval")) == 2
