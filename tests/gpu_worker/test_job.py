"""The job plans deterministic shards and resumes: only missing shards are redone."""

from __future__ import annotations

import pytest

from gpu_worker.job import run_generation, use_chat
from shared.errors import TandemError
from shared.spec import RunSpec
from shared.store import Store
from shared.tasks import TASKS


def fake_spec(data_dir, **overrides) -> RunSpec:
    values = dict(
        run_id="fake-run",
        backend="fake",
        tasks=("ifeval", "tinymmlu"),
        limit={"ifeval": 10, "tinymmlu": 6},
        shard_size=4,
        data_dir=str(data_dir),
    )
    values.update(overrides)
    return RunSpec(**values)


def all_sample_ids(store: Store, run_id: str, task: str) -> list[str]:
    ids = []
    for ref in store.list_shards(run_id, "generations", task):
        ids += (
            store.read_table(store.shard_path("generations", ref)).column("sample_id").to_pylist()
        )
    return ids


def test_generation_writes_every_sample_once(tmp_path, data_dir):
    spec = fake_spec(data_dir)
    result = run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    assert result.shards_done == 3 + 2
    ifeval_ids = all_sample_ids(store, "fake-run", "ifeval")
    expected = [s.sample_id for s in TASKS["ifeval"].loader(data_dir)[:10]]
    assert ifeval_ids == expected
    record = store.read_run("fake-run")
    assert record["spec_hash"] == spec.spec_hash()
    assert record["tasks"]["ifeval"] == {"samples": 10, "shard_size": 4}
    assert {"packages", "git_sha", "host", "accelerator"} <= record["environment"].keys()
    assert record["model"]["chat_template_sha256"]


def test_rerun_regenerates_only_the_deleted_shard(tmp_path, data_dir):
    spec = fake_spec(data_dir)
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    shards = store.list_shards("fake-run", "generations", "ifeval")
    victim = shards[1]
    untouched = {
        r.name: (tmp_path / "runs/fake-run/generations/ifeval" / f"{r.name}.parquet")
        .stat()
        .st_mtime_ns
        for r in shards
        if r != victim
    }
    (tmp_path / "runs/fake-run/generations/ifeval" / f"{victim.name}.parquet").unlink()

    result = run_generation(spec, str(tmp_path), local=True, progress=False)
    assert result.shards_done == 1 and result.shards_skipped == 4
    assert [s["shard"] for s in result.stats] == [victim.name]
    ids = all_sample_ids(store, "fake-run", "ifeval")
    assert len(ids) == len(set(ids)) == 10
    for name, mtime in untouched.items():
        path = tmp_path / "runs/fake-run/generations/ifeval" / f"{name}.parquet"
        assert path.stat().st_mtime_ns == mtime


def test_same_run_id_with_other_spec_is_refused(tmp_path, data_dir):
    run_generation(fake_spec(data_dir), str(tmp_path), local=True, progress=False)
    with pytest.raises(TandemError, match="different spec"):
        run_generation(
            fake_spec(data_dir, precision="bf16"), str(tmp_path), local=True, progress=False
        )


def test_chat_template_modes():
    ifeval, mmlu = TASKS["ifeval"], TASKS["tinymmlu"]
    auto = RunSpec(tasks=("ifeval",))
    assert use_chat(auto, ifeval, has_template=True) is True
    assert use_chat(auto, ifeval, has_template=False) is False
    assert use_chat(auto, mmlu, has_template=True) is False
    assert use_chat(RunSpec(tasks=("ifeval",), chat_template="on"), mmlu, True) is True
    assert use_chat(RunSpec(tasks=("ifeval",), chat_template="off"), ifeval, True) is False
    assert use_chat(RunSpec(tasks=("ifeval",), kind="base"), ifeval, True) is False


def test_rows_record_the_rendered_prompt(tmp_path, data_dir):
    run_generation(fake_spec(data_dir), str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    ref = store.list_shards("fake-run", "generations", "ifeval")[0]
    row = store.read_table(store.shard_path("generations", ref)).to_pylist()[0]
    assert row["rendered_prompt"] == f"<|user|>{row['prompt']}<|assistant|>"
    ref = store.list_shards("fake-run", "generations", "tinymmlu")[0]
    row = store.read_table(store.shard_path("generations", ref)).to_pylist()[0]
    assert row["rendered_prompt"] == row["prompt"]  # log-likelihood tasks: raw text
    assert row["choices"] == [" A", " B", " C", " D"] and len(row["logprobs"]) == 4
