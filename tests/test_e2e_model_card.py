"""The model-card suite end to end on the embedded SmolLM2: every task from the spec
through generation, the CPU scorer (code in the sandbox) and the summary to the API.
Small limits; WinoGrande's few-shot pool is a small file written here (the shared data
lacks lm-eval's train_xl), HellaSwag runs 0-shot (no train split offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LIMIT = 1


def _data_dir(tmp_path: Path, data_dir: Path) -> Path:
    """The shared data, plus winogrande/train_xl.jsonl: 40 rows standing in for lm-eval's
    few-shot pool (the loader looks in data_dir/winogrande/ before data_dir/mc/...)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for child in data_dir.iterdir():
        (folder / child.name).symlink_to(child)
    (folder / "winogrande").mkdir()
    rows = (data_dir / "mc/winogrande/train_s.jsonl").read_text().splitlines()[:40]
    (folder / "winogrande" / "train_xl.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_the_model_card_suite_runs_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from cpu_scorer.api import create_app
    from cpu_scorer.scoring import score_once
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec
    from shared.store import Store
    from shared.tasks import SUITES

    suite = SUITES["model-card"]
    folder = _data_dir(tmp_path, data_dir)
    spec = RunSpec(
        run_id="model-card",
        tasks=("model-card",),
        num_fewshot={"hellaswag": 0},
        limit={task: LIMIT for task in suite},
        precision="fp32",
        data_dir=str(folder),
        generation={"max_new_tokens": 24},
    )
    assert spec.num_fewshot["winogrande"] == 5 and spec.num_fewshot["mmlu"] == 5
    result = run_generation(spec, str(tmp_path / "store"), local=True, progress=False)
    # MMLU's limit counts per subject (as lm-eval's --limit on its 57 subtasks).
    expected = {task: LIMIT * (57 if task == "mmlu" else 1) for task in suite}
    assert result.samples == sum(expected.values())
    store = Store(tmp_path / "store")
    (tally,) = score_once(store, progress=False, confirm_unsafe_code=True).values()
    assert tally.quarantined == 0 and tally.failed == 0 and tally.unconfirmed == 0
    summary = store.summary("model-card")
    assert set(summary.tasks) == set(suite)
    for task, entry in summary.tasks.items():
        assert entry.complete and entry.samples_scored == expected[task], task
        value = entry.metrics[entry.headline]
        assert isinstance(value, float) and (math.isfinite(value) or task == "lambada_openai")
    rows = [
        json.loads(r["doc"])
        for ref in store.list_shards("model-card", "generations", "gsm8k")
        for r in store.read_table(store.shard_path("generations", ref)).to_pylist()
    ]
    assert all(len(doc["fewshot"]["ids"]) == 8 for doc in rows)
    with TestClient(create_app(str(tmp_path / "store"))) as client:
        (entry,) = client.get("/runs").json()["runs"]
        assert set(entry["scores"]) == set(suite)
        samples = client.get("/runs/model-card/samples", params={"task": "humaneval"}).json()
        assert len(samples["rows"]) == LIMIT
        for row in samples["rows"]:  # each program's outcome, per sample
            # The samples API returns a scorer's details as an object (the viewer's
            # contract since the samples API for the viewer), not as JSON text.
            assert isinstance(row["details"], dict), row["details"]
            assert row["details"]["status"] in ("passed", "failed", "timeout", "error")
