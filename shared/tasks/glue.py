"""GLUE RTE, SST-2 and MRPC validation splits, scored as lm-eval's ``glue/<task>`` tasks.

Contexts (choices in index order = label order):

* rte: ``{sentence1}\\nQuestion: {sentence2} True or False?\\nAnswer:`` -- True, False
* sst2: ``{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:``
  -- negative, positive
* mrpc: ``Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nQuestion: Do both
  sentences mean the same thing?\\nAnswer:`` -- no, yes

Labels are GLUE's ClassLabel integers (RTE 0 = entailment, so "True" is index 0). Text
is used as stored: SST-2 keeps GLUE's tokenised form with its trailing space. lm-eval
reports acc (and f1 for MRPC); we also report acc_norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.tasks._base import Sample, TaskDef, load_from_hub, read_jsonl, require_fields
from shared.tasks._mc import check_gold, find_mc_file, mc_sample


@dataclass(frozen=True)
class _Glue:
    name: str
    fields: tuple[str, ...]
    render: Callable[[dict[str, Any]], str]
    choices: tuple[str, ...]


_RTE = _Glue(
    "rte",
    ("sentence1", "sentence2"),
    lambda d: f"{d['sentence1']}\nQuestion: {d['sentence2']} True or False?\nAnswer:",
    ("True", "False"),
)
_SST2 = _Glue(
    "sst2",
    ("sentence",),
    lambda d: f"{d['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
    ("negative", "positive"),
)
_MRPC = _Glue(
    "mrpc",
    ("sentence1", "sentence2"),
    lambda d: (
        f"Sentence 1: {d['sentence1']}\nSentence 2: {d['sentence2']}\n"
        "Question: Do both sentences mean the same thing?\nAnswer:"
    ),
    ("no", "yes"),
)


def _samples(glue: _Glue, source: Path, numbered: list[tuple[int, dict[str, Any]]]) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, {field: str for field in glue.fields})
        idx = row.get("idx", index)
        samples.append(
            mc_sample(
                str(idx),
                glue.render(row),
                list(glue.choices),
                check_gold(source, number, row.get("label"), len(glue.choices)),
                idx=idx,
            )
        )
    return samples


def _loader(glue: _Glue) -> Callable[[Path | None], list[Sample]]:
    def load(data_dir: Path | None) -> list[Sample]:
        if data_dir is None:
            rows = load_from_hub(glue.name, "nyu-mll/glue", glue.name, "validation")
            return _samples(glue, Path("nyu-mll/glue"), list(enumerate(rows, start=1)))
        source = find_mc_file(data_dir, glue.name, [f"glue_{glue.name}_validation.jsonl"])
        return _samples(glue, source, list(read_jsonl(source)))

    return load


RTE = TaskDef(
    name="rte",
    output="multiple_choice",
    description="GLUE RTE validation (277 entailment pairs), acc and acc_norm",
    loader=_loader(_RTE),
)
SST2 = TaskDef(
    name="sst2",
    output="multiple_choice",
    description="GLUE SST-2 validation (872 movie-review sentences), acc and acc_norm",
    loader=_loader(_SST2),
)
MRPC = TaskDef(
    name="mrpc",
    output="multiple_choice",
    description="GLUE MRPC validation (408 paraphrase pairs), acc, acc_norm and f1",
    loader=_loader(_MRPC),
)
