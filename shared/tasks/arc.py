"""ARC-Easy and ARC-Challenge (AI2), scored as lm-eval does: on the *test* split.

lm-eval ``arc_easy.yaml``: context ``"Question: {question}\\nAnswer:"``, one continuation
``" " + text`` per choice (3 to 5 of them), gold = position of ``answerKey`` among the
labels (``A``-``E`` for most items, ``1``-``4`` for some). acc and acc_norm.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import HubSource, Numbered, Sample
from shared.tasks._fewshot import Fewshot
from shared.tasks._mc import answer_exemplar, choice_task, mc_sample, rows_loader


def render_arc(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _rows_to_samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for number, row in numbered:
        require_fields(
            source, number, row, {"id": str, "question": str, "choices": dict, "answerKey": str}
        )
        texts, labels = row["choices"].get("text"), row["choices"].get("label")
        if (
            not isinstance(texts, list)
            or not isinstance(labels, list)
            or len(texts) != len(labels)
            or len(texts) < 2
        ):
            raise TandemError(
                f"{source}:{number}: choices must hold equally long 'text' and 'label' lists "
                "with at least two entries"
            )
        if row["answerKey"] not in labels:
            raise TandemError(
                f"{source}:{number}: answerKey {row['answerKey']!r} is not one of the labels "
                f"{labels}"
            )
        samples.append(
            mc_sample(
                row["id"],
                render_arc(row["question"]),
                [str(text) for text in texts],
                labels.index(row["answerKey"]),
                id=row["id"],
                labels=list(labels),
            )
        )
    return samples


def _fewshot(task: str, config: str) -> Fewshot:
    # lm-eval draws ARC's exemplars from the train split (training_split: train).
    return Fewshot(
        pool=rows_loader(
            task,
            [f"{config}-train.jsonl"],
            HubSource("allenai/ai2_arc", config, "train"),
            _rows_to_samples,
        ),
        exemplar=answer_exemplar,
    )


ARC_EASY = choice_task(
    "arc_easy",
    "ARC-Easy test (2376 grade-school science questions), acc and acc_norm",
    ["ARC-Easy-test.jsonl"],
    HubSource("allenai/ai2_arc", "ARC-Easy", "test"),
    _rows_to_samples,
    fewshot=_fewshot("arc_easy", "ARC-Easy"),
)

ARC_CHALLENGE = choice_task(
    "arc_challenge",
    "ARC-Challenge test (1172 harder science questions), acc and acc_norm",
    ["ARC-Challenge-test.jsonl"],
    HubSource("allenai/ai2_arc", "ARC-Challenge", "test"),
    _rows_to_samples,
    fewshot=_fewshot("arc_challenge", "ARC-Challenge"),
)
