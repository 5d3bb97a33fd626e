"""IFEval (Google, 541 prompts): generate a response, check its verifiable instructions."""

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


def _load(data_dir: Path | None) -> list[Sample]:
    if data_dir is None:
        rows = load_from_hub("ifeval", "google/IFEval", None, "train")
        numbered = list(enumerate(rows, start=1))
        source = Path("google/IFEval")
    else:
        source = find_data_file(data_dir, "ifeval", ["input_data.jsonl"])
        numbered = list(read_jsonl(source))
    samples = []
    for number, row in numbered:
        require_fields(
            source,
            number,
            row,
            {"key": int, "prompt": str, "instruction_id_list": list, "kwargs": list},
        )
        if not row["instruction_id_list"] or len(row["kwargs"]) != len(row["instruction_id_list"]):
            raise TandemError(
                f"{source}:{number}: instruction_id_list must be non-empty and kwargs must "
                "hold one entry per instruction"
            )
        # The hub copy stores absent kwargs as None; the JSONL omits them. Same meaning.
        kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]]
        samples.append(
            Sample(
                sample_id=str(row["key"]),
                prompt=row["prompt"],
                doc={
                    "key": row["key"],
                    "instruction_id_list": row["instruction_id_list"],
                    "kwargs": kwargs,
                },
            )
        )
    return samples


IFEVAL = TaskDef(
    name="ifeval",
    output="generate",
    description="IFEval: 541 prompts with 25 kinds of verifiable instructions",
    loader=_load,
    chat_by_default=True,
)
