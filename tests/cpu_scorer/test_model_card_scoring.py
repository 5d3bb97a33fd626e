"""Scoring the model-card tasks end to end on the fake backend: code through the
sandbox (opt-in), MMLU's groups, LAMBADA's perplexity, GSM8K's details."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cpu_scorer.aggregations import aggregate_task
from cpu_scorer.scoring import score_once
from gpu_worker.job import run_generation
from shared.spec import RunSpec
from shared.store import Store
from shared.tasks import TASKS

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _generate(root: Path, task: str, limit: int, **fields) -> Store:
    spec = RunSpec(
        run_id=task,
        backend="fake",
        tasks=(task,),
        limit={task: limit},
        data_dir=str(DATA),
        **fields,
    )
    run_generation(spec, str(root), local=True, progress=False)
    return Store(root)


def _set_responses(store: Store, run: str, task: str, responses: dict[str, str]) -> None:
    for ref in store.list_shards(run, "generations", task):
        path = store.shard_path("generations", ref)
        table = store.read_table(path)
        new = [
            responses.get(i, r)
            for i, r in zip(
                table.column("sample_id").to_pylist(),
                table.column("response").to_pylist(),
                strict=True,
            )
        ]
        table = table.set_column(
            table.column_names.index("response"), "response", pa.array(new, pa.string())
        )
        store.publish_table(path, table)


def _canonical(count: int) -> dict[str, str]:
    rows = [
        json.loads(line) for line in (DATA / "humaneval/HumanEval.jsonl").read_text().splitlines()
    ]
    return {r["task_id"]: r["canonical_solution"] for r in rows[:count]}


def test_humaneval_runs_programs_only_when_confirmed(tmp_path: Path) -> None:
    store = _generate(tmp_path, "humaneval", 4, shard_size=2)
    solutions = _canonical(4)
    solutions["HumanEval/3"] = "    return 42\n"  # wrong
    _set_responses(store, "humaneval", "humaneval", solutions)

    (tally,) = score_once(store, progress=False).values()
    assert tally.unconfirmed == 2 and tally.scored == 0 and tally.quarantined == 0
    assert not list(tmp_path.glob("runs/*/scores/*/*")) and not list(
        tmp_path.glob("runs/*/quarantine/*/*")
    )

    (tally,) = score_once(store, progress=False, confirm_unsafe_code=True).values()
    assert tally.scored == 2
    rows = [
        r
        for p in sorted(tmp_path.glob("runs/*/scores/*/*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]
    passed = {r["sample_id"]: dict(r["metrics"])["pass@1"] for r in rows}
    assert passed == {
        "HumanEval/0": 1.0,
        "HumanEval/1": 1.0,
        "HumanEval/2": 1.0,
        "HumanEval/3": 0.0,
    }
    details = {r["sample_id"]: json.loads(r["details"]) for r in rows}
    assert details["HumanEval/0"]["status"] == "passed"
    assert (
        details["HumanEval/3"]["status"] == "failed"
        and "AssertionError" in details["HumanEval/3"]["message"]
    )
    assert store.summary("humaneval").tasks["humaneval"].metrics["pass@1"] == 0.75


def test_tandem_score_says_how_to_run_code_tasks(tmp_path: Path, capsys) -> None:
    from tandem.cli import main

    _generate(tmp_path, "mbpp", 2, num_fewshot={"mbpp": 3})
    assert main(["score", "--quiet", "--store", str(tmp_path)]) == 1
    assert "add --confirm-run-unsafe-code" in capsys.readouterr().out


def test_gsm8k_rows_keep_what_was_compared(tmp_path: Path) -> None:
    store = _generate(tmp_path, "gsm8k", 2, num_fewshot={"gsm8k": 2})
    _set_responses(
        store, "gsm8k", "gsm8k", {"0": " 16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18", "1": "It is 3."}
    )
    score_once(store, progress=False)
    rows = [
        r for p in tmp_path.glob("runs/*/scores/*/*.parquet") for r in pq.read_table(p).to_pylist()
    ]
    by_id = {r["sample_id"]: r for r in rows}
    assert dict(by_id["0"]["metrics"])["exact_match,strict-match"] == 1.0
    assert json.loads(by_id["0"]["details"]) == {
        "strict-match": "18",
        "flexible-extract": "18",
        "target": "18",
    }
    assert dict(by_id["1"]["metrics"])["exact_match,flexible-extract"] == 1.0  # "3" is the answer
    assert dict(by_id["1"]["metrics"])["exact_match,strict-match"] == 0.0


def test_mmlu_groups_are_weighted_by_size_with_pooled_stderr() -> None:
    rows = []
    values = {"abstract_algebra": [1, 0, 1, 1], "anatomy": [0, 0, 1], "philosophy": [1, 1]}
    for subject, accs in values.items():
        for i, acc in enumerate(accs):
            rows.append(
                {"sample_id": f"{subject}/{i}", "metrics": [("acc", float(acc))], "error": None}
            )
    result, scored, failed = aggregate_task(TASKS["mmlu"], rows)
    metrics = result.metrics
    assert (scored, failed) == (9, 0)
    assert metrics["acc"] == 6 / 9
    assert metrics["by_subject"]["anatomy"]["acc"] == 1 / 3
    stem = metrics["by_category"]["stem"]  # abstract_algebra and anatomy
    assert stem["n"] == 7 and stem["acc"] == 4 / 7
    assert metrics["by_category"]["humanities"]["acc"] == 1.0

    def se(xs):  # sample std / sqrt(n)
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))

    groups = [(len(v), se(v)) for v in values.values()]
    pooled = math.sqrt(
        sum((n - 1) * s**2 * n for n, s in groups) / (sum(n for n, _ in groups) - len(groups)) / 9
    )
    assert math.isclose(metrics["acc_stderr"], pooled)


def test_lambada_reports_acc_and_perplexity(tmp_path: Path) -> None:
    store = _generate(tmp_path, "lambada_openai", 6)
    score_once(store, progress=False)
    metrics = store.summary("lambada_openai").tasks["lambada_openai"].metrics
    rows = [
        r
        for p in tmp_path.glob("runs/*/generations/*/*.parquet")
        for r in pq.read_table(p).to_pylist()
    ]
    mean = sum(r["logprobs"][0] for r in rows) / len(rows)
    assert math.isclose(metrics["perplexity"], math.exp(-mean))
    assert metrics["acc"] == sum(r["is_greedy"][0] for r in rows) / len(rows)
