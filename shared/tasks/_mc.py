"""Helpers shared by the multiple-choice task modules (ARC, PIQA, HellaSwag, GLUE...).

Every multiple-choice task follows lm-eval's defaults: the context is ``doc_to_text``
with nothing appended, and each choice is scored as the continuation ``" " + choice``
(the target delimiter belongs to the continuation, because most tokenizers fold a
leading space into the next word's token: " Paris" is one token, " " + "Paris" two).
acc_norm divides by the length of the choice *without* that space, so each sample's
``doc`` carries ``choice_texts`` next to the scored ``choices``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import TandemError
from shared.tasks._base import Sample

TARGET_DELIMITER = " "


def find_mc_file(data_dir: Path, task: str, candidates: list[str]) -> Path:
    """The first candidate found in data_dir, data_dir/<task> or data_dir/mc/<task>.

    The last form is the layout of the project's shared data folder, so
    ``--data-dir ../shared/data`` works for every task.
    """
    folders = (data_dir, data_dir / task, data_dir / "mc" / task)
    for name in candidates:
        for folder in folders:
            path = folder / name
            if path.is_file():
                return path
    raise TandemError(
        f"task {task}: none of {candidates} found in {', '.join(str(f) for f in folders)}; "
        "point --data-dir (or data_dir in the spec) at a folder holding them"
    )


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
