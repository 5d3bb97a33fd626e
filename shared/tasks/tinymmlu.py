"""tinyMMLU (tinyBenchmarks): 100 MMLU items, already in 5-shot form, scored " A".." D"."""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.tasks._base import (
    Sample,
    TaskDef,
    find_data_file,
    load_from_hub,
    read_jsonl,
    require_fields,
)

LETTERS = ("A", "B", "C", "D")


def _load(data_dir: Path | None) -> list[Sample]:
    if data_dir is None:
        rows = load_from_hub("tinymmlu", "tinyBenchmarks/tinyMMLU", "all", "test")
        numbered = list(enumerate(rows, start=1))
        source = Path("tinyBenchmarks/tinyMMLU")
    else:
        source = find_data_file(data_dir, "tinymmlu", ["tinyMMLU_test.jsonl"])
        numbered = list(read_jsonl(source))
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
    output="multiple_choice",
    description="tinyMMLU: 100 MMLU items (5-shot), accuracy + tinyBenchmarks IRT estimates",
    loader=_load,
)
