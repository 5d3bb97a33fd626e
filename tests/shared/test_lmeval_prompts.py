"""The model-card tasks send a model exactly what lm-evaluation-harness 0.4.13 sends it:
for the first documents of every task, at the suite's shot counts, every context and
continuation (or stop strings) equals lm-eval's, byte for byte.

The fixtures come from lm-eval itself (``bench/lmeval_fixtures.py``). Where lm-eval's
few-shot pool is not in the shared data (HellaSwag's and WinoGrande's train splits), the
fixture holds the small pool it was made with and the test writes it to a data folder.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from gpu_worker.shards import generation_settings
from shared.spec import RunSpec
from shared.tasks import SUITES, TASKS, load_samples

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lmeval"
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TASK_FIXTURES = sorted(
    p.name.split(".")[0] for p in FIXTURES.glob("*.json.gz") if "mmlu" not in p.name
)


def _fixture(name: str) -> dict:
    return json.loads(gzip.decompress((FIXTURES / f"{name}.json.gz").read_bytes()))


def _data_dir(fixture: dict, tmp_path: Path) -> Path:
    """The shared data, plus the fixture's own files (small stand-in pools)."""
    if not fixture["data"]:
        return DATA
    folder = tmp_path / "data"
    task_folder = folder / fixture["task"]
    task_folder.mkdir(parents=True)
    for name, rows in fixture["data"].items():
        (task_folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if fixture["task"] == "winogrande":
        shutil.copy(DATA / "mc/winogrande/winogrande_xl_validation.jsonl", task_folder)
    return folder


def _ours(sample, task) -> list[dict]:
    """The requests the worker builds for ``sample`` (gpu_worker.shards)."""
    if task.kind == "generate":
        spec = RunSpec(tasks=(task.name,))
        budget, stop = generation_settings(spec, task)
        return [{"context": sample.prompt, "until": list(stop), "max_new_tokens": budget}]
    contexts = sample.contexts or (sample.prompt,) * len(sample.choices)
    return [
        {"context": c, "continuation": k} for c, k in zip(contexts, sample.choices, strict=True)
    ]


def _theirs(doc: dict) -> list[dict]:
    return [{**r, "context": doc["contexts"][r["context"]]} for r in doc["requests"]]


@pytest.mark.parametrize("name", TASK_FIXTURES)
def test_prompts_equal_lm_eval(name: str, tmp_path: Path) -> None:
    fixture = _fixture(name)
    task = TASKS[name]
    if "model-card" in SUITES and name in SUITES["model-card"]:
        assert SUITES["model-card"][name] == fixture["num_fewshot"]
    samples = load_samples(
        task,
        _data_dir(fixture, tmp_path),
        len(fixture["docs"]),
        num_fewshot=fixture["num_fewshot"],
        fewshot_seed=fixture["fewshot_seed"],
    )
    assert [d["doc_index"] for d in fixture["docs"]] == list(range(len(samples)))
    for sample, doc in zip(samples, fixture["docs"], strict=True):
        ours, theirs = _ours(sample, task), _theirs(doc)
        if task.kind == "generate":
            (mine,), (reference,) = ours, theirs
            assert mine["context"] == reference["context"], sample.sample_id
            assert mine["until"] == reference["until"], sample.sample_id
            if "max_gen_toks" in reference:
                assert mine["max_new_tokens"] == reference["max_gen_toks"]
        else:
            assert ours == theirs, sample.sample_id
        if fixture["num_fewshot"]:
            assert len(sample.doc["fewshot"]["ids"]) == fixture["num_fewshot"]


def test_mmlu_prompts_equal_lm_eval_in_every_subject() -> None:
    fixture = _fixture("mmlu")
    samples = load_samples(TASKS["mmlu"], DATA, None, num_fewshot=fixture["num_fewshot"])
    by_id = {s.sample_id: s for s in samples}
    assert len(fixture["subjects"]) == 57
    for entry in fixture["subjects"]:
        for doc in entry["docs"]:
            sample = by_id[f"{entry['subject']}/{doc['doc_index']}"]
            assert _ours(sample, TASKS["mmlu"]) == _theirs(doc), sample.sample_id
            assert len(sample.doc["fewshot"]["ids"]) == 5
