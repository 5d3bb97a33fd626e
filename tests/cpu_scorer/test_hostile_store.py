"""One bad file never stops the scorer, never pollutes a number, never makes the API
answer 500: each case of the hardening issue's acceptance list."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fresh_copy

from cpu_scorer.daemon import Daemon, DaemonConfig
from cpu_scorer.scoring import score_store
from shared.store import Store


def _once(root: Path):
    return Daemon(Store(str(root)), DaemonConfig(once=True, interval=0.01)).run()


def _shard(root: Path, run: str, task: str, name: str = "0000000-0000004") -> Path:
    return root / "runs" / run / "generations" / task / f"{name}.parquet"


def _rewrite(path: Path, change) -> None:
    table = pq.read_table(path)
    table = change(table)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path.write_bytes(buffer.getvalue())


def _set(table: pa.Table, column: str, values: list, kind: pa.DataType) -> pa.Table:
    return table.set_column(table.column_names.index(column), column, pa.array(values, kind))


def _record(root: Path, run: str, task: str, name: str) -> dict:
    return json.loads(
        (root / "runs" / run / "quarantine" / task / f"{name}.error.json").read_text()
    )


def _all_good_scored(root: Path, bad: set[str]) -> None:
    """Every generation shard not named in ``bad`` has its score shard."""
    for path in root.glob("runs/*/generations/*/*.parquet"):
        key = "/".join(path.parts[-4:])
        if key in bad:
            continue
        score = path.parents[2] / "scores" / path.parent.name / path.name
        assert score.exists(), key


@pytest.fixture
def clean_scores(store_copy: Path, tmp_path: Path) -> dict[str, bytes]:
    """Score shards of the clean store: what every intact shard must score to."""
    reference = fresh_copy(store_copy, tmp_path / "reference")
    _once(reference)
    return {
        "/".join(p.parts[-4:]): p.read_bytes() for p in reference.glob("runs/*/scores/*/*.parquet")
    }


# ---- 1. no input stops the daemon or blocks other runs ---------------------------------
def test_a_multiple_choice_shard_in_the_ifeval_folder_is_quarantined(store_copy: Path) -> None:
    extra = _shard(store_copy, "run-a", "ifeval", "0000040-0000044")
    shutil.copy(_shard(store_copy, "run-a", "tinymmlu"), extra)
    tally = _once(store_copy)
    assert tally.quarantined == 1 and tally.failed == 0
    record = _record(store_copy, "run-a", "ifeval", "0000040-0000044")
    assert "a loglikelihoods shard in the folder of task 'ifeval'" in record["error"]
    assert record["source"] == "runs/run-a/generations/ifeval/0000040-0000044.parquet"
    _all_good_scored(store_copy, set())


def test_a_column_of_the_wrong_type_is_quarantined(store_copy: Path) -> None:
    path = _shard(store_copy, "run-a", "tinymmlu")
    _rewrite(path, lambda t: _set(t, "prompt_tokens", ["many"] * t.num_rows, pa.string()))
    tally = _once(store_copy)
    assert tally.quarantined == 1 and tally.failed == 0
    assert "wrong column types" in _record(store_copy, "run-a", "tinymmlu", path.stem)["error"]
    _all_good_scored(store_copy, set())


def test_a_folder_that_is_not_a_task_is_recorded_and_the_rest_scored(store_copy: Path) -> None:
    bad = store_copy / "runs/run-a/generations/Bad Task"
    bad.mkdir()
    shutil.copy(_shard(store_copy, "run-a", "tinymmlu"), bad / "0000000-0000004.parquet")
    tally = _once(store_copy)  # returns: --once always exits
    assert tally.failed == 0 and tally.scored > 0
    (problem,) = (store_copy / "runs/run-a/quarantine/_run").glob("folder-*.error.json")
    assert "generations/Bad Task" in json.loads(problem.read_text())["path"]
    assert (bad / "0000000-0000004.parquet").exists()  # nothing moved or deleted
    _all_good_scored(store_copy, {"run-a/generations/Bad Task/0000000-0000004.parquet"})
    summary = json.loads((store_copy / "runs/run-a/summary.json").read_text())
    assert set(summary["tasks"]) == {"ifeval", "tinymmlu"}


def test_a_folder_of_an_unknown_task_is_quarantined_shard_by_shard(store_copy: Path) -> None:
    folder = store_copy / "runs/run-a/generations/nosuchtask"
    folder.mkdir()
    shutil.copy(_shard(store_copy, "run-a", "tinymmlu"), folder / "0000000-0000004.parquet")
    tally = _once(store_copy)
    assert tally.quarantined == 1
    record = _record(store_copy, "run-a", "nosuchtask", "0000000-0000004")
    assert "'nosuchtask' is not a task this tandem knows" in record["error"]


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"run"', "{not json", '{"run_id": 7}'])
def test_a_run_json_of_the_wrong_shape_blocks_only_its_run(store_copy: Path, text: str) -> None:
    original = (store_copy / "runs/run-b/run.json").read_bytes()
    (store_copy / "runs/run-b/run.json").write_text(text)
    tally = _once(store_copy)
    assert tally.failed == 0
    assert len(list(store_copy.glob("runs/run-a/scores/*/*.parquet"))) == 16  # 10 + 6
    assert not (store_copy / "runs/run-b/scores").exists()
    problem = json.loads(
        (store_copy / "runs/run-b/quarantine/_run/run.json.error.json").read_text()
    )
    assert "runs/run-b/run.json" in problem["error"]
    # Repaired, it is scored, and the stale problem record goes.
    (store_copy / "runs/run-b/run.json").write_bytes(original)
    assert _once(store_copy).scored == 16
    assert not (store_copy / "runs/run-b/quarantine/_run/run.json.error.json").exists()


# ---- 2. numbers are never polluted -----------------------------------------------------
def _pollute(root: Path, case: str) -> str:
    """Make one polluting shard in run-a's tinymmlu; returns its name."""
    folder = root / "runs/run-a/generations/tinymmlu"
    first = folder / "0000000-0000004.parquet"
    if case == "duplicate_ids":
        _rewrite(first, lambda t: _set(t, "sample_id", ["0", "0", "2", "3"], pa.string()))
        return first.stem
    if case == "other_run":
        shutil.copy(root / "runs/run-b/generations/tinymmlu/0000000-0000004.parquet", first)
        _rewrite(first, lambda t: _set(t, "run_id", ["run-b"] * t.num_rows, pa.string()))
        return first.stem
    if case == "wrong_task_folder":
        _rewrite(first, lambda t: _set(t, "task", ["piqa"] * t.num_rows, pa.string()))
        return first.stem
    if case == "overlapping_range":
        shutil.copy(folder / "0000004-0000008.parquet", folder / "0000002-0000006.parquet")
        return "0000002-0000006"
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("duplicate_ids", "duplicate sample ids"),
        ("other_run", "copied from elsewhere"),
        ("wrong_task_folder", "rows with task 'piqa'"),
        ("overlapping_range", "overlaps or duplicates another"),
    ],
)
def test_a_polluting_shard_is_quarantined_not_counted(
    store_copy: Path, clean_scores: dict[str, bytes], case: str, why: str
) -> None:
    name = _pollute(store_copy, case)
    tally = _once(store_copy)
    assert tally.quarantined == 1 and tally.failed == 0
    assert why in _record(store_copy, "run-a", "tinymmlu", name)["error"]
    summary = json.loads((store_copy / "runs/run-a/summary.json").read_text())
    entry = summary["tasks"]["tinymmlu"]
    assert entry["samples_scored"] + entry["samples_failed"] <= entry["samples_total"] == 24
    for path in store_copy.glob("runs/*/scores/*/*.parquet"):  # intact shards: same bytes
        assert path.read_bytes() == clean_scores["/".join(path.parts[-4:])]


# ---- 3. a corrupt score shard ----------------------------------------------------------
def test_a_corrupt_score_shard_is_set_aside_and_scored_again(
    store_copy: Path, clean_scores: dict[str, bytes]
) -> None:
    from fastapi.testclient import TestClient

    from cpu_scorer.api import create_app

    _once(store_copy)
    good_summary = (store_copy / "runs/run-a/summary.json").read_bytes()
    target = store_copy / "runs/run-a/scores/tinymmlu/0000004-0000008.parquet"
    target.write_bytes(b"PAR1 this is not a score shard PAR1")

    with TestClient(create_app(str(store_copy))) as client:
        broken = client.get("/runs/run-a/samples", params={"task": "tinymmlu"})
        assert broken.status_code == 503
        assert "0000004-0000008" in broken.text and str(store_copy) not in broken.text
        assert client.get("/runs/run-b/samples", params={"task": "tinymmlu"}).status_code == 200
        assert client.get("/runs").status_code == 200

    tally = _once(store_copy)
    assert tally.set_aside == 1 and tally.scored == 1
    aside = list((store_copy / "runs/run-a/quarantine/tinymmlu").glob("0000004-0000008.scores-*"))
    assert sorted(p.suffix for p in aside) == [".json", ".parquet"]
    parquet = next(p for p in aside if p.suffix == ".parquet")
    assert parquet.read_bytes() == b"PAR1 this is not a score shard PAR1"  # kept, not deleted
    assert target.read_bytes() == clean_scores["run-a/scores/tinymmlu/0000004-0000008.parquet"]
    assert (store_copy / "runs/run-a/summary.json").read_bytes() == good_summary
    with TestClient(create_app(str(store_copy))) as client:
        assert client.get("/runs/run-a/samples", params={"task": "tinymmlu"}).status_code == 200


# ---- 7. the API under change -----------------------------------------------------------
def test_a_deleted_run_is_404_everywhere_and_a_recreated_one_is_new(store_copy: Path) -> None:
    from fastapi.testclient import TestClient

    from cpu_scorer.api import create_app

    score_store(Store(str(store_copy)), progress=False)
    routes = [
        "/runs/run-b",
        "/runs/run-b/scores",
        "/runs/run-b/samples?task=tinymmlu",
        "/runs/run-b/export",
        "/compare?a=run-a&b=run-b&task=tinymmlu",
    ]
    with TestClient(create_app(str(store_copy))) as client:
        for route in routes:  # warm every cache
            assert client.get(route).status_code == 200, route
        saved = store_copy.parent / "run-b-saved"
        shutil.move(store_copy / "runs/run-b", saved)
        for route in routes:
            assert client.get(route).status_code == 404, route
        assert [r["run_id"] for r in client.get("/runs").json()["runs"]] == ["run-a"]
        shutil.move(saved, store_copy / "runs/run-b")
        record = json.loads((store_copy / "runs/run-b/run.json").read_text())
        record["created_at"] = "2030-01-01T00:00:00Z"
        (store_copy / "runs/run-b/run.json").write_text(json.dumps(record) + "\n" * 3)
        assert client.get("/runs/run-b").json()["created_at"] == "2030-01-01T00:00:00Z"


def test_a_damaged_store_answers_503_without_its_path(store_copy: Path) -> None:
    from fastapi.testclient import TestClient

    from cpu_scorer.api import create_app

    score_store(Store(str(store_copy)), progress=False)
    (store_copy / "runs/run-b/run.json").write_text("[1, 2, 3]")
    (store_copy / "runs/run-a/scores/ifeval/0000000-0000004.parquet").write_bytes(b"junk")
    (store_copy / "runs/run-a/generations/tinymmlu/0000000-0000004.parquet").write_bytes(b"junk")
    (store_copy / "runs/run-a/summary.json").write_text("{")
    with TestClient(create_app(str(store_copy))) as client:
        listing = client.get("/runs")
        assert listing.status_code == 200
        damaged = {r["run_id"]: r["error"] for r in listing.json()["runs"]}
        assert damaged["run-a"] is None and "run.json" in damaged["run-b"]
        for route in [
            "/runs/run-b",
            "/runs/run-b/scores",
            "/runs/run-a/scores",
            "/runs/run-a/samples?task=ifeval",
            "/runs/run-a/samples?task=tinymmlu",
            "/runs/run-a/export",
            "/compare?a=run-a&b=run-b&task=ifeval",
            "/compare?a=run-a&b=run-a&task=ifeval",
            "/metrics",
        ]:
            response = client.get(route)
            assert response.status_code in (200, 404, 503), (route, response.status_code)
            assert str(store_copy) not in response.text, route
            if response.status_code == 503:
                assert response.json()["detail"], route
