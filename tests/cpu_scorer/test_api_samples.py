"""The samples API behind the viewer: server-side filters (pass/fail, instruction id,
text), one sample in full, and sweeps (runs sharing a ``sweep`` in their spec)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import generate, write_sweep
from fastapi.testclient import TestClient

from cpu_scorer.api import create_app
from cpu_scorer.scoring import score_store
from shared.store import Store


@pytest.fixture(scope="module")
def client(scored_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(str(scored_store))) as client:
        yield client


def _scores(store: Path, run_id: str, task: str) -> list[dict]:
    folder = store / "runs" / run_id / "scores" / task
    return [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _all(client: TestClient, **params) -> list[dict]:
    body = client.get("/runs/run-b/samples", params={"limit": 500, **params}).json()
    assert body["total"] == len(body["rows"])
    return body["rows"]


def test_instruction_filter_with_and_without_a_verdict(
    client: TestClient, scored_store: Path
) -> None:
    rows = _scores(scored_store, "run-b", "ifeval")
    counts: dict[str, int] = {}
    for row in rows:
        for name in row["instruction_id_list"]:
            counts[name] = counts.get(name, 0) + 1
    name = max(counts, key=lambda n: counts[n])
    having = _all(client, task="ifeval", instruction=name)
    assert len(having) == counts[name]
    failing = _all(client, task="ifeval", instruction=name, failed="true")
    passing = _all(client, task="ifeval", instruction=name, failed="false")
    assert len(failing) + len(passing) == counts[name]
    for row in failing:
        verdict = {i["id"]: i["strict"] for i in row["instructions"]}
        assert verdict[name] is False
    for row in passing:
        assert {i["id"]: i["strict"] for i in row["instructions"]}[name] is True
    # Paged on the server: the same rows in pages of 2.
    pages = [
        client.get(
            "/runs/run-b/samples",
            params={"task": "ifeval", "instruction": name, "offset": k, "limit": 2},
        ).json()
        for k in range(0, len(having), 2)
    ]
    assert [r["sample_id"] for p in pages for r in p["rows"]] == [r["sample_id"] for r in having]


def test_text_search_over_prompt_response_and_id(client: TestClient, scored_store: Path) -> None:
    everything = _all(client, task="ifeval")
    word = everything[0]["response"].split()[0]
    hits = _all(client, task="ifeval", q=word.upper())
    expected = [
        r["sample_id"]
        for r in everything
        if word.casefold() in (r["prompt"] + r["response"]).casefold()
    ]
    assert [r["sample_id"] for r in hits] == expected and hits
    one = everything[3]["sample_id"]
    assert one in [r["sample_id"] for r in _all(client, task="ifeval", q=one)]
    assert _all(client, task="ifeval", q="@@ no such text @@") == []
    failed = _all(client, task="ifeval", q=word, failed="true")
    assert {r["sample_id"] for r in failed} <= set(expected)
    assert all(r["passed"] is False for r in failed)


def test_one_ifeval_sample_in_full(client: TestClient, scored_store: Path) -> None:
    row = next(
        r for r in _scores(scored_store, "run-b", "ifeval") if not all(r["inst_level_strict"])
    )
    body = client.get(
        "/runs/run-b/sample", params={"task": "ifeval", "id": row["sample_id"]}
    ).json()
    assert body["passed"] is False and body["scored"] is True
    assert body["response"] and body["prompt"]
    assert body["rendered_prompt"].startswith("<|user|>")  # run-b uses the chat template
    assert [i["id"] for i in body["instructions"]] == row["instruction_id_list"]
    assert [i["strict"] for i in body["instructions"]] == row["inst_level_strict"]
    assert [i["loose"] for i in body["instructions"]] == row["inst_level_loose"]
    assert all("kwargs" in i for i in body["instructions"])
    assert body["metrics"]["prompt_level_strict_acc"] == 0.0


def test_one_multiple_choice_sample_in_full(client: TestClient, scored_store: Path) -> None:
    generation = pq.read_table(
        sorted((scored_store / "runs/run-a/generations/tinymmlu").glob("*.parquet"))[0]
    ).to_pylist()[1]
    body = client.get(
        "/runs/run-a/sample", params={"task": "tinymmlu", "id": generation["sample_id"]}
    ).json()
    choices = body["choices"]
    assert [c["text"] for c in choices] == generation["choices"]
    assert [c["logprob"] for c in choices] == generation["logprobs"]
    best = max(range(len(choices)), key=lambda i: generation["logprobs"][i])
    assert [c["won"] for c in choices] == [i == best for i in range(len(choices))]
    assert [c["gold"] for c in choices] == [i == generation["gold"] for i in range(len(choices))]
    assert sum(c["won_norm"] for c in choices) == 1
    assert body["passed"] == (best == generation["gold"])


def test_unknown_samples_are_404(client: TestClient) -> None:
    response = client.get("/runs/run-a/sample", params={"task": "ifeval", "id": "no-such"})
    assert response.status_code == 404 and "no sample" in response.json()["detail"]


def test_details_are_shown_as_the_scorer_wrote_them(tmp_path: Path) -> None:
    """A generative task's scorer writes ``details`` (extracted answer vs target): the
    sample view parses its JSON and shows it as is, whatever its keys."""
    import pyarrow as pa

    root = tmp_path / "store"
    generate(str(root), "g", tasks=("ifeval",), limit={"ifeval": 4})
    score_store(Store(str(root)), progress=False)
    path = next((root / "runs/g/scores/ifeval").glob("*.parquet"))
    table = pq.read_table(path)
    details = [json.dumps({"extracted": str(i), "target": "42"}) for i in range(table.num_rows)]
    index = table.schema.get_field_index("details")
    pq.write_table(table.set_column(index, "details", pa.array(details, pa.string())), path)
    sample_id = table.column("sample_id")[2].as_py()
    with TestClient(create_app(str(root))) as client:
        body = client.get("/runs/g/sample", params={"task": "ifeval", "id": sample_id}).json()
        rows = client.get("/runs/g/samples", params={"task": "ifeval"}).json()["rows"]
    assert body["details"] == {"extracted": "2", "target": "42"}
    assert rows[2]["details"] == {"extracted": "2", "target": "42"}


def test_sweeps_group_runs_by_their_spec(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids = write_sweep(root, "pretrain", [20000, 10000, None])
    generate(str(root), "lonely", tasks=("ifeval",), limit={"ifeval": 4})
    with TestClient(create_app(str(root))) as client:
        assert client.get("/sweeps").json() == {
            "sweeps": [{"sweep": "pretrain", "runs": 3, "steps": 2}]
        }
        points = client.get("/sweeps/pretrain").json()["points"]
        runs = {r["run_id"]: r for r in client.get("/runs").json()["runs"]}
        missing = client.get("/sweeps/nothing")
    assert [p["run_id"] for p in points] == [ids[1], ids[0], ids[2]]
    assert [p["step"] for p in points] == [10000, 20000, None]
    summary = json.loads((root / "runs" / ids[1] / "summary.json").read_text())
    metrics = summary["tasks"]["ifeval"]["metrics"]
    ifeval = points[0]["tasks"]["ifeval"]
    assert ifeval["metrics"]["prompt_level_strict_acc"] == metrics["prompt_level_strict_acc"]
    assert ifeval["stderr"]["prompt_level_strict_acc"] == metrics["prompt_level_strict_acc_stderr"]
    assert "by_instruction" not in ifeval["metrics"]  # curves are of numbers
    assert runs[ids[0]]["sweep"] == "pretrain" and runs[ids[0]]["step"] == 20000
    assert runs["lonely"]["sweep"] is None and runs["lonely"]["step"] is None
    assert missing.status_code == 404
