from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from shared.errors import TandemError
from shared.schema import SCHEMAS, make_table, schema_of, upgrade
from shared.store import ShardRef, Store, shard_ranges


def generation_rows(run_id: str, task: str, ids: list[str]) -> list[dict]:
    return [
        {
            "run_id": run_id,
            "task": task,
            "sample_id": i,
            "prompt": f"p{i}",
            "rendered_prompt": f"<p{i}>",
            "response": "r",
            "prompt_tokens": 3,
            "generated_tokens": 1,
            "finish_reason": "eos",
            "truncated_tokens": 0,
            "batch_seconds": 0.5,
            "batch_size": 2,
            "doc": "{}",
            "error": None,
        }
        for i in ids
    ]


PROV = {
    "config_hash": "abc",
    "git_sha": "deadbeef",
    "backend": "fake",
    "model_id": "m",
    "model_revision": "",
    "created_at": "2026-01-01T00:00:00Z",
}


def test_shard_ranges_are_deterministic():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(0, 4) == []


def test_table_round_trip_keeps_schema_name_version_and_provenance(tmp_path):
    store = Store(tmp_path)
    table = make_table("generations", generation_rows("r1", "ifeval", ["1", "2"]), PROV)
    ref = ShardRef("r1", "ifeval", 0, 2)
    store.publish_table(store.shard_path("generations", ref), table)
    back = store.read_table(store.shard_path("generations", ref))
    assert schema_of(back) == ("generations", 1)
    kind, upgraded = upgrade(back)
    assert kind == "generations"
    assert upgraded.to_pylist() == table.to_pylist()
    meta = back.schema.metadata
    assert meta[b"tandem.git_sha"] == b"deadbeef"
    assert meta[b"tandem.created_at"] == b"2026-01-01T00:00:00Z"
    assert store.list_shards("r1", "generations", "ifeval") == [ref]


def test_every_schema_has_row_keys_and_error():
    for definition in SCHEMAS.values():
        names = definition.schema.names
        assert names[:3] == ["run_id", "task", "sample_id"]
        assert "error" in names and definition.schema.field("error").nullable


def test_make_table_names_missing_columns():
    rows = generation_rows("r", "ifeval", ["1"])
    del rows[0]["response"]
    with pytest.raises(TandemError, match="response"):
        make_table("generations", rows, PROV)


def test_newer_schema_version_is_refused():
    table = make_table("generations", generation_rows("r", "ifeval", ["1"]), PROV)
    meta = dict(table.schema.metadata)
    meta[b"tandem.schema_version"] = b"99"
    with pytest.raises(TandemError, match="newer"):
        upgrade(table.replace_schema_metadata(meta))


def test_foreign_parquet_is_not_a_tandem_shard():
    with pytest.raises(TandemError, match="not a tandem shard"):
        upgrade(pa.table({"x": [1]}))


def test_crash_between_write_and_rename_leaves_nothing_visible(tmp_path):
    """A writer killed after writing its temp file but before the rename publishes nothing."""
    script = textwrap.dedent(
        f"""
        import os
        from shared.store import Store
        os.replace = lambda *a: os._exit(9)   # die exactly between write+fsync and rename
        store = Store({str(tmp_path)!r})
        name = "0000000-0000002.parquet"
        store.publish_bytes(store.path("runs", "r1", "generations", "ifeval", name), b"x" * 1000)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 9
    store = Store(tmp_path)
    folder = store.path("runs", "r1", "generations", "ifeval")
    assert store.list_names(folder) == []  # readers see nothing
    assert store.list_shards("r1", "generations", "ifeval") == []
    leftovers = list((tmp_path / "runs/r1/generations/ifeval").iterdir())
    assert leftovers and all(p.name.startswith(".") for p in leftovers)  # only a hidden temp


def test_publish_replaces_whole_file(tmp_path):
    store = Store(tmp_path)
    path = store.path("a", "b.json")
    store.publish_json(path, {"v": 1})
    store.publish_json(path, {"v": 2})
    assert store.read_json(path) == {"v": 2}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_run_ids_cannot_escape_the_store(tmp_path, bad):
    with pytest.raises(TandemError, match="invalid run id"):
        Store(tmp_path).run_path(bad)


def test_start_run_refuses_a_different_spec(tmp_path):
    store = Store(tmp_path)
    store.start_run("r1", {"spec_hash": "aaa"})
    assert store.start_run("r1", {"spec_hash": "aaa"}) == {"spec_hash": "aaa"}
    with pytest.raises(TandemError, match="different spec"):
        store.start_run("r1", {"spec_hash": "bbb"})


def test_create_exclusive_only_once(tmp_path):
    store = Store(tmp_path)
    path = store.path("claims", "x.json")
    assert store.create_exclusive(path, b"1") is True
    assert store.create_exclusive(path, b"2") is False
    assert store.read_bytes(path) == b"1"
