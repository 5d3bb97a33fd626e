"""Few-shot in the spec, in each row, and when its pool is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import TandemError
from shared.spec import RunSpec, parse_spec
from shared.tasks import SUITES, TASKS, load_samples

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_the_model_card_suite_expands_with_its_shot_counts() -> None:
    spec = RunSpec(tasks=("model-card",), num_fewshot={"gsm8k": 5})
    assert list(spec.tasks) == list(SUITES["model-card"])
    assert spec.num_fewshot["gsm8k"] == 5  # the user's count wins
    assert spec.num_fewshot["mmlu"] == 5 and spec.num_fewshot["arc_challenge"] == 25


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tasks": ["ifeval"], "num_fewshot": {"ifeval": 2}}, "takes no few-shot examples"),
        ({"tasks": ["mmlu"], "num_fewshot": {"gsm8k": 8}}, "not in tasks"),
        ({"tasks": ["mmlu"], "num_fewshot": {"mmlu": -1}}, "0 or more"),
        ({"tasks": ["mmlu"], "num_fewshot": {"mmlu": True}}, "num_fewshot.mmlu"),
        ({"tasks": ["mmlu"], "fewshot_seed": "1234"}, "fewshot_seed"),
        ({"tasks": ["model-crad"]}, "did you mean 'model-card'"),
    ],
)
def test_bad_fewshot_settings_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(TandemError, match=message):
        parse_spec(fields, "spec.toml")


def test_the_seed_picks_the_exemplars_and_rows_say_which() -> None:
    task = TASKS["arc_challenge"]
    one = load_samples(task, DATA, 3, num_fewshot=5, fewshot_seed=1234)
    again = load_samples(task, DATA, 3, num_fewshot=5, fewshot_seed=1234)
    other = load_samples(task, DATA, 3, num_fewshot=5, fewshot_seed=7)
    assert [s.prompt for s in one] == [s.prompt for s in again]
    assert [s.doc["fewshot"]["ids"] for s in one] != [s.doc["fewshot"]["ids"] for s in other]
    assert one[0].doc["fewshot"] == {"shots": 5, "seed": 1234, "ids": one[0].doc["fewshot"]["ids"]}
    # The exemplars of doc 2 do not depend on the limit (the draws run from doc 0).
    assert load_samples(task, DATA, 10, num_fewshot=5)[2].prompt == one[2].prompt


@pytest.mark.parametrize(
    ("task", "file"), [("hellaswag", "hellaswag_train.jsonl"), ("winogrande", "train_xl.jsonl")]
)
def test_a_missing_fewshot_pool_says_what_to_do(task: str, file: str) -> None:
    with pytest.raises(TandemError) as caught:
        load_samples(TASKS[task], DATA, 2, num_fewshot=3)
    text = str(caught.value)
    assert file in text and "--data-dir" in text and f"{task} = 0" in text


def test_zero_shot_keeps_the_description() -> None:
    sample = load_samples(TASKS["mmlu"], DATA, 1, num_fewshot=0)[0]
    assert sample.prompt.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    )
    assert "fewshot" not in sample.doc


def test_run_json_and_rows_record_the_fewshot_settings(tmp_path: Path) -> None:
    from gpu_worker.job import run_generation
    from shared.store import Store

    spec = RunSpec(
        run_id="fs",
        backend="fake",
        tasks=("arc_challenge",),
        limit={"arc_challenge": 4},
        num_fewshot={"arc_challenge": 3},
        fewshot_seed=99,
        data_dir=str(DATA),
    )
    run_generation(spec, str(tmp_path), local=True, progress=False)
    store = Store(tmp_path)
    record = store.run_record("fs")
    assert record.spec["num_fewshot"] == {"arc_challenge": 3} and record.spec["fewshot_seed"] == 99
    ref = store.list_shards("fs", "generations", "arc_challenge")[0]
    row = store.read_table(store.shard_path("generations", ref)).to_pylist()[0]
    fewshot = json.loads(row["doc"])["fewshot"]
    assert fewshot["shots"] == 3 and fewshot["seed"] == 99 and len(fewshot["ids"]) == 3
    assert row["prompt"].count("\nAnswer:") == 4  # three exemplars and the question


def test_an_mmlu_limit_counts_per_subject_and_first_n_blocks_are_shared() -> None:
    """lm-eval's --limit 2 on its mmlu group takes 2 of each of the 57 subtasks."""
    samples = load_samples(TASKS["mmlu"], DATA, 2, num_fewshot=5)
    subjects = [s.doc["subject"] for s in samples]
    assert len(samples) == 114 and len(set(subjects)) == 57
    assert all(subjects.count(subject) == 2 for subject in set(subjects))
    assert [s.sample_id.split("/")[1] for s in samples[:2]] == ["0", "1"]
    # first_n: one block per subject, at the start of each prompt.
    first, second = samples[0], samples[1]
    assert first.shared_prefix and first.shared_prefix == second.shared_prefix
    assert first.prompt.startswith(first.shared_prefix)
    assert samples[2].shared_prefix != first.shared_prefix
    # random exemplars differ per item: nothing is declared shared.
    arc = load_samples(TASKS["arc_challenge"], DATA, 2, num_fewshot=5)
    assert [s.shared_prefix for s in arc] == ["", ""]
