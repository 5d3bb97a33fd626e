"""Samples that share a few-shot block are grouped into the same shards (tinyMMLU by
subject), the run records it, and a run that started in the data's order resumes in it."""

from __future__ import annotations

import json

from gpu_worker.job import run_generation
from shared.spec import RunSpec
from shared.store import Store
from shared.tasks import TASKS, load_samples


def _subjects(store: Store, run_id: str) -> list[list[str]]:
    out = []
    for ref in store.list_shards(run_id, "generations", "tinymmlu"):
        rows = store.read_table(store.shard_path("generations", ref)).to_pylist()
        out.append([json.loads(r["doc"])["subject"] for r in rows])
    return out


def test_tinymmlu_shards_hold_a_subject_together(tmp_path, data_dir) -> None:
    spec = RunSpec(
        run_id="grouped",
        backend="fake",
        tasks=("tinymmlu",),
        limit={"tinymmlu": 40},
        shard_size=8,
        data_dir=str(data_dir),
    )
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    assert store.run_record("grouped").orders == {"tinymmlu": "subject"}
    flat = [s for shard in _subjects(store, "grouped") for s in shard]
    assert flat == sorted(flat)  # grouped, and the same 40 items as the data's first 40
    first40 = load_samples(TASKS["tinymmlu"], data_dir, 40)
    ids = [
        r["sample_id"]
        for ref in store.list_shards("grouped", "generations", "tinymmlu")
        for r in store.read_table(store.shard_path("generations", ref)).to_pylist()
    ]
    assert sorted(ids, key=int) == [s.sample_id for s in first40]


def test_a_run_started_in_the_datas_order_resumes_in_it(tmp_path, data_dir) -> None:
    spec = RunSpec(
        run_id="legacy",
        backend="fake",
        tasks=("tinymmlu",),
        limit={"tinymmlu": 16},
        shard_size=8,
        data_dir=str(data_dir),
    )
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    # Make it look like a run from before grouping: no orders, shards in data order.
    path = tmp_path / "runs/legacy/run.json"
    record = json.loads(path.read_text())
    record.pop("orders")
    path.write_text(json.dumps(record))
    for shard in (tmp_path / "runs/legacy/generations/tinymmlu").glob("*.parquet"):
        shard.unlink()
    first = tmp_path / "runs/legacy/generations/tinymmlu"
    run_generation(spec, str(tmp_path), local=True, progress=False)  # regenerates both
    subjects = _subjects(store, "legacy")
    data_order = [s.doc["subject"] for s in load_samples(TASKS["tinymmlu"], data_dir, 16)]
    assert [s for shard in subjects for s in shard] == data_order
    assert first.is_dir()
