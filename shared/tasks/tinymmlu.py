"""tinyMMLU (tinyBenchmarks): 100 MMLU items, already in 5-shot form, scored " A".." D"."""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import CHOICE_METRICS, HubSource, Metric, Sample, TaskDef, load_rows

LETTERS = ("A", "B", "C", "D")


def _load(data_dir: Path | None) -> list[Sample]:
    source, numbered = load_rows(
        "tinymmlu",
        data_dir,
        ["tinyMMLU_test.jsonl"],
        HubSource("tinyBenchmarks/tinyMMLU", "all", "test"),
    )
    samples = []
    for doc_id, (number, row) in enumerate(numbered):
        require_fields(source, number, row, {"input_formatted": str, "answer": int, "subject": str})
        if not 0 <= row["answer"] < len(LETTERS):
            raise TandemError(f"{source}:{number}: answer must be 0-3, got {row['answer']}")
        samples.append(
            Sample(
                sample_id=str(doc_id),
                # lm-eval: context is input_formatted verbatim; the target delimiter " "
                # belongs to the continuation, so the choices are " A".." D".
                prompt=row["input_formatted"],
                choices=tuple(" " + letter for letter in LETTERS),
                gold=row["answer"],
                doc={"doc_id": doc_id, "subject": row["subject"], "choice_texts": list(LETTERS)},
            )
        )
    return samples


TINYMMLU = TaskDef(
    name="tinymmlu",
    kind="multiple_choice",
    description="tinyMMLU: 100 MMLU items (5-shot), accuracy + tinyBenchmarks IRT estimates",
    loader=_load,
    scorer="choices",
    metrics=(
        *CHOICE_METRICS,
        Metric("irt", "tinybenchmarks_irt"),
        Metric("pirt", "tinybenchmarks_irt"),
        Metric("gpirt", "tinybenchmarks_irt"),
    ),
    headline="acc_norm",
    # Items of one subject share their 5-shot block: grouped, the block runs once.
    order_by="subject",
)
