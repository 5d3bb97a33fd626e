"""IFEval (Google, 541 prompts): generate a response, check its verifiable instructions."""

from __future__ import annotations

from pathlib import Path

from shared.errors import TandemError
from shared.jsonl import require_fields
from shared.tasks._base import HubSource, Metric, Sample, TaskDef, load_rows


def _load(data_dir: Path | None) -> list[Sample]:
    source, numbered = load_rows(
        "ifeval", data_dir, ["input_data.jsonl"], HubSource("google/IFEval", None, "train")
    )
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
    kind="generate",
    description="IFEval: 541 prompts with 25 kinds of verifiable instructions",
    loader=_load,
    scorer="ifeval",
    metrics=(
        Metric("prompt_level_strict_acc"),
        Metric("inst_level_strict_acc", "inst_mean"),
        Metric("prompt_level_loose_acc"),
        Metric("inst_level_loose_acc", "inst_mean"),
        Metric("by_instruction", "by_instruction"),
    ),
    headline="prompt_level_strict_acc",
    chat_by_default=True,
)
