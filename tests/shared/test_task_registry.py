"""Tasks declare how they are scored; adding one is one definition and one registry line."""

from __future__ import annotations

import typing

import pytest
from fastapi.testclient import TestClient

from cpu_scorer.aggregations import AGGREGATIONS
from cpu_scorer.scorers import SCORERS
from shared.tasks import SCHEMA_FOR_KIND, TASKS, Sample, TaskDef, TaskKind
from shared.tasks._base import CHOICE_METRICS


def test_every_task_declares_a_known_scorer_metrics_and_headline() -> None:
    for task in TASKS.values():
        scorer = SCORERS[task.scorer]
        assert scorer.schema == task.schema == SCHEMA_FOR_KIND[task.kind], task.name
        assert {m.aggregation for m in task.metrics} <= set(AGGREGATIONS), task.name
        assert task.headline in [m.name for m in task.metrics], task.name
    assert set(typing.get_args(TaskKind)) == set(SCHEMA_FOR_KIND)


def test_a_headline_must_be_one_of_the_metrics() -> None:
    from shared.errors import TandemError

    with pytest.raises(TandemError, match="headline 'f1' is not in"):
        TaskDef("x", "multiple_choice", "", lambda d: [], "choices", CHOICE_METRICS, "f1")


def _toy_samples(data_dir) -> list[Sample]:
    return [
        Sample(
            sample_id=f"toy-{i}",
            prompt=f"Is {i} even?\nAnswer:",
            choices=(" yes", " no"),
            gold=i % 2,
            doc={"choice_texts": ["yes", "no"]},
        )
        for i in range(6)
    ]


def test_a_toy_task_added_here_runs_end_to_end(tmp_path, monkeypatch) -> None:
    """The toy task touches no other file: its definition, one registry line, done."""
    from cpu_scorer.api import create_app
    from cpu_scorer.scoring import score_store
    from gpu_worker.job import run_generation
    from shared.spec import RunSpec
    from shared.store import Store

    toy = TaskDef(
        name="toy",
        kind="multiple_choice",
        description="a toy yes/no task",
        loader=_toy_samples,
        scorer="choices",
        metrics=CHOICE_METRICS,
        headline="acc",
    )
    monkeypatch.setitem(TASKS, "toy", toy)  # the one registry line

    spec = RunSpec(run_id="toy", backend="fake", tasks=("toy",), shard_size=4)
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    assert score_store(store, progress=False) == {"toy": {"scored": 2, "quarantined": 0}}
    entry = store.summary("toy").tasks["toy"]
    assert entry.headline == "acc" and entry.complete and entry.samples_scored == 6
    assert 0.0 <= entry.metrics["acc"] <= 1.0 and "acc_norm_stderr" in entry.metrics
    with TestClient(create_app(str(tmp_path))) as client:
        scores = client.get("/runs").json()["runs"][0]["scores"]
        assert scores["toy"]["metric"] == "acc"
        assert client.get("/runs/toy/samples", params={"task": "toy"}).json()["total"] == 6
