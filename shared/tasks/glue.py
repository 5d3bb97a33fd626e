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
from functools import partial
from pathlib import Path
from typing import Any

from shared.jsonl import require_fields
from shared.tasks._base import CHOICE_METRICS, HubSource, Metric, Numbered, Sample, TaskDef
from shared.tasks._mc import check_gold, choice_task, mc_sample


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


def _samples(glue: _Glue, source: Path, numbered: Numbered) -> list[Sample]:
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


def _task(glue: _Glue, description: str, metrics: tuple[Metric, ...] = CHOICE_METRICS) -> TaskDef:
    # lm-eval's glue tasks report acc (and f1 for MRPC); acc_norm is computed too.
    return choice_task(
        glue.name,
        description,
        [f"glue_{glue.name}_validation.jsonl"],
        HubSource("nyu-mll/glue", glue.name, "validation"),
        partial(_samples, glue),
        headline="acc",
        metrics=metrics,
    )


RTE = _task(_RTE, "GLUE RTE validation (277 entailment pairs), acc and acc_norm")
SST2 = _task(_SST2, "GLUE SST-2 validation (872 movie-review sentences), acc and acc_norm")
MRPC = _task(
    _MRPC,
    "GLUE MRPC validation (408 paraphrase pairs), acc, acc_norm and f1",
    (*CHOICE_METRICS, Metric("f1", "f1")),
)
