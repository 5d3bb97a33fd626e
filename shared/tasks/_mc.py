"""Helpers shared by the multiple-choice task modules (ARC, PIQA, HellaSwag, GLUE...).

Every multiple-choice task follows lm-eval's defaults: the context is ``doc_to_text``
with nothing appended, and each choice is scored as the continuation ``" " + choice``
(the target delimiter belongs to the continuation, because most tokenizers fold a
leading space into the next word's token: " Paris" is one token, " " + "Paris" two).
acc_norm divides by the length of the choice *without* that space, so each sample's
``doc`` carries ``choice_texts`` next to the scored ``choices``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import TandemError
from shared.tasks._base import (
    CHOICE_METRICS,
    HubSource,
    Metric,
    Numbered,
    Sample,
    TaskDef,
    load_rows,
)
from shared.tasks._fewshot import Fewshot

TARGET_DELIMITER = " "


def choice_task(
    name: str,
    description: str,
    files: list[str],
    hub: HubSource,
    samples: Callable[[Path, Numbered], list[Sample]],
    headline: str = "acc_norm",
    metrics: tuple[Metric, ...] = CHOICE_METRICS,
    fewshot: Fewshot | None = None,
) -> TaskDef:
    """A multiple-choice task whose rows come from one JSONL file or the hub, turned
    into samples by ``samples(source, numbered rows)``."""
    return TaskDef(
        name=name,
        kind="multiple_choice",
        description=description,
        loader=rows_loader(name, files, hub, samples),
        scorer="choices",
        metrics=metrics,
        headline=headline,
        fewshot=fewshot,
    )


def rows_loader(
    name: str,
    files: list[str],
    hub: HubSource,
    samples: Callable[[Path, Numbered], list[Sample]],
    folder: str | None = None,
) -> Callable[[Path | None], list[Sample]]:
    """A loader: ``samples`` of the rows of the first of ``files`` found (in data_dir,
    data_dir/<folder> or data_dir/mc/<folder>), or of the hub."""

    def load(data_dir: Path | None) -> list[Sample]:
        return samples(*load_rows(name, data_dir, files, hub, folder))

    return load


def answer_exemplar(sample: Sample) -> str:
    """lm-eval's exemplar for a multiple-choice sample: the context, the target
    delimiter and the gold choice's text."""
    return sample.prompt + TARGET_DELIMITER + sample.doc["choice_texts"][sample.gold or 0]


def check_gold(source: Path | str, number: int, gold: Any, count: int) -> int:
    """The gold index as an int in [0, count); TandemError naming the row otherwise."""
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < count:
        raise TandemError(
            f"{source}:{number}: gold answer must be an index in 0..{count - 1}, got {gold!r}"
        )
    return gold


def mc_sample(
    sample_id: str,
    context: str,
    choice_texts: list[str],
    gold: int,
    **doc: Any,
) -> Sample:
    """A multiple-choice sample scored as ``(context, " " + choice)`` per choice."""
    return Sample(
        sample_id=sample_id,
        prompt=context,
        choices=tuple(TARGET_DELIMITER + text for text in choice_texts),
        gold=gold,
        doc={**doc, "choice_texts": list(choice_texts)},
    )
