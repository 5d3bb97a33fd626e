"""GSM8K (1319 grade-school word problems), scored as lm-eval's ``gsm8k``: the context is
``"Question: {question}\\nAnswer:"``, exemplars are train problems with their full
worked answers (lm-eval's random sampler, seed 1234; the model-card protocol is 8-shot,
no chain-of-thought prompt beyond the answers themselves), generation stops at
"Question:", "</s>" or "<|im_end|>". Two filters extract the answer, each scored by
exact match against the number after "####" in the reference:

* ``strict-match``: the number after "#### " in the response;
* ``flexible-extract``: the last number-like span in the response.

Both ignore case, commas, dollar signs and a trailing period (``cpu_scorer.answers``).
"""

from __future__ import annotations

from pathlib import Path

from shared.jsonl import require_fields
from shared.tasks._base import Generation, HubSource, Metric, Numbered, Sample, TaskDef
from shared.tasks._fewshot import Fewshot
from shared.tasks._mc import rows_loader


def render(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, {"question": str, "answer": str})
        samples.append(
            Sample(
                sample_id=str(index),
                prompt=render(row["question"]),
                doc={"answer": row["answer"]},
            )
        )
    return samples


def _exemplar(sample: Sample) -> str:
    return sample.prompt + " " + sample.doc["answer"]


GSM8K = TaskDef(
    name="gsm8k",
    kind="generate",
    description="GSM8K test (1319 word problems), exact match (strict and flexible)",
    loader=rows_loader(
        "gsm8k",
        ["gsm8k_test.jsonl", "gsm8k/test.jsonl"],
        HubSource("openai/gsm8k", "main", "test"),
        _samples,
    ),
    scorer="gsm8k",
    metrics=(Metric("exact_match,strict-match"), Metric("exact_match,flexible-extract")),
    headline="exact_match,strict-match",
    fewshot=Fewshot(
        pool=rows_loader(
            "gsm8k",
            ["gsm8k_train.jsonl", "gsm8k/train.jsonl"],
            HubSource("openai/gsm8k", "main", "train"),
            _samples,
        ),
        exemplar=_exemplar,
    ),
    generation=Generation(stop=("Question:", "</s>", "<|im_end|>")),
)
