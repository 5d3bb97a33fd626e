"""BoolQ (SuperGLUE layout) validation, scored as lm-eval's ``super_glue/boolq``: acc, acc_norm.

Context ``"{passage}\\nQuestion: {question}?\\nAnswer:"``, choices ``" no"`` / ``" yes"``,
gold = label (0 = False -> "no"). The passage is SuperGLUE's, which starts with the
Wikipedia title and ``" -- "``; Google's original layout (no title) gives other prompts.
Labels come as 0/1 (Hugging Face), JSON booleans, or the strings "false"/"true" (the
OpenCompass copy in the shared data folder); all three mean the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import HubSource, Numbered, Sample
from shared.tasks._mc import choice_task, mc_sample

CHOICES = ["no", "yes"]
_LABELS: dict[Any, int] = {"false": 0, "true": 1, False: 0, True: 1}


def render_boolq(passage: str, question: str) -> str:
    return f"{passage}\nQuestion: {question}?\nAnswer:"


def parse_label(source: Path, number: int, label: Any) -> int:
    if isinstance(label, str):
        label = label.strip().lower()
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        return label
    if isinstance(label, (str, bool)) and label in _LABELS:
        return _LABELS[label]
    raise TandemError(
        f'{source}:{number}: label must be 0/1, true/false or "true"/"false", got {label!r}'
    )


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, {"passage": str, "question": str})
        if "label" not in row:
            raise TandemError(f"{source}:{number}: missing field 'label'")
        idx = row.get("idx", index)
        samples.append(
            mc_sample(
                str(idx),
                render_boolq(row["passage"], row["question"]),
                CHOICES,
                parse_label(source, number, row["label"]),
                idx=idx,
            )
        )
    return samples


# lm-eval's super_glue/boolq reports acc only; acc_norm is computed too.
BOOLQ = choice_task(
    "boolq",
    "BoolQ validation (3270 yes/no questions on a passage), acc and acc_norm",
    ["val.jsonl"],
    HubSource("aps/super_glue", "boolq", "validation"),
    _samples,
    headline="acc",
)
