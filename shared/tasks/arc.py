"""ARC-Easy and ARC-Challenge (AI2), scored as lm-eval does: on the *test* split.

lm-eval ``arc_easy.yaml``: context ``"Question: {question}\\nAnswer:"``, one continuation
``" " + text`` per choice (3 to 5 of them), gold = position of ``answerKey`` among the
labels (``A``-``E`` for most items, ``1``-``4`` for some). acc and acc_norm.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import TandemError
from shared.tasks._base import Sample, TaskDef, load_from_hub, read_jsonl, require_fields
from shared.tasks._mc import find_mc_file, mc_sample


def render_arc(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _rows_to_samples(source: Path, numbered: list[tuple[int, dict[str, Any]]]) -> list[Sample]:
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


def _loader(task: str, config: str, filename: str) -> Callable[[Path | None], list[Sample]]:
    def load(data_dir: Path | None) -> list[Sample]:
        if data_dir is None:
            rows = load_from_hub(task, "allenai/ai2_arc", config, "test")
            return _rows_to_samples(Path("allenai/ai2_arc"), list(enumerate(rows, start=1)))
        source = find_mc_file(data_dir, task, [filename])
        return _rows_to_samples(source, list(read_jsonl(source)))

    return load


ARC_EASY = TaskDef(
    name="arc_easy",
    output="multiple_choice",
    description="ARC-Easy test (2376 grade-school science questions), acc and acc_norm",
    loader=_loader("arc_easy", "ARC-Easy", "ARC-Easy-test.jsonl"),
)

ARC_CHALLENGE = TaskDef(
    name="arc_challenge",
    output="multiple_choice",
    description="ARC-Challenge test (1172 harder science questions), acc and acc_norm",
    loader=_loader("arc_challenge", "ARC-Challenge", "ARC-Challenge-test.jsonl"),
)
