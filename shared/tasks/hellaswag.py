"""HellaSwag validation (10042 items), scored as lm-eval's ``hellaswag.yaml``: acc, acc_norm.

Two sources, recorded per sample in ``doc["source_format"]``:

* ``raw`` -- rows with ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label`` (the
  Hugging Face ``Rowan/hellaswag`` rows, or the original ``hellaswag_val.jsonl``). These get
  lm-eval's ``process_docs`` exactly, so prompts are byte-identical with lm-eval's.
* ``text`` -- llama.cpp's text rendering ``hellaswag_val_full.txt(.bz2)``, the only copy in
  the shared data folder: six lines per item (context, gold, four endings), already
  preprocessed by llama.cpp's own rules. It differs from lm-eval in three ways, which we
  cannot undo because the raw ``ctx_a``/``ctx_b`` split is gone:
  1. the context uses the raw ``ctx`` (``ctx_b`` keeps its lower-case first letter, and
     its other letters keep their case), where lm-eval uses ``ctx_a + " " +
     ctx_b.capitalize()`` (e.g. ``"... on a roof. he"`` vs ``"... on a roof. He"``);
  2. llama.cpp deletes only the ``[header]``/``[step]``/``[substeps]``/``[title]`` tags
     and trims one leading and trailing space of every line, so an ending that lm-eval
     leaves with a leading space (one that began with ``[substeps] ``) has none here;
  3. 18 items still hold other ``[...]`` spans; for those lines we apply lm-eval's span
     removal and its one-pass double-space collapse, so that part matches again.
  Scores on the text copy are therefore close to, not identical with, lm-eval's.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from typing import Any

from shared.errors import TandemError
from shared.jsonl import read_jsonl, require_fields
from shared.tasks._base import (
    CHOICE_METRICS,
    Numbered,
    Sample,
    TaskDef,
    find_data_file,
    load_from_hub,
)
from shared.tasks._fewshot import Fewshot
from shared.tasks._mc import answer_exemplar, check_gold, mc_sample

_SPAN = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py`` preprocess, in its order (no final strip)."""
    text = text.strip()
    # Brackets are WikiHow artifacts; " [title]" marks a sentence boundary.
    text = text.replace(" [title]", ". ")
    text = _SPAN.sub("", text)
    return text.replace("  ", " ")


def process_raw(doc: dict[str, Any]) -> tuple[str, list[str], int]:
    """(context, endings, gold) from a raw row, exactly as lm-eval's process_docs."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = preprocess(doc["activity_label"] + ": " + ctx)
    return query, [preprocess(ending) for ending in doc["endings"]], int(doc["label"])


def _fix_text_line(line: str) -> str:
    # Only lines that still hold a bracket span: remove it the way lm-eval would and
    # collapse the double space the removal leaves.
    return _SPAN.sub("", line).replace("  ", " ") if "[" in line else line


def _from_raw(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(
            source,
            number,
            row,
            {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": list},
        )
        if len(row["endings"]) != 4 or "label" not in row:
            raise TandemError(f"{source}:{number}: need four endings and a label")
        try:
            context, endings, gold = process_raw(row)
        except (TypeError, ValueError) as error:
            raise TandemError(f"{source}:{number}: bad endings or label: {error}") from error
        samples.append(
            mc_sample(
                str(index),
                context,
                endings,
                check_gold(source, number, gold, 4),
                source_format="raw",
            )
        )
    return samples


def _from_text(source: Path) -> list[Sample]:
    try:
        if source.suffix == ".bz2":
            with bz2.open(source, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = source.read_text(encoding="utf-8")
    except (OSError, EOFError) as error:
        raise TandemError(f"cannot read {source}: {error}") from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TandemError(
            f"{source}: {len(lines)} lines is not a multiple of 6 (context, gold, 4 endings)"
        )
    samples = []
    for index in range(len(lines) // 6):
        block = lines[6 * index : 6 * index + 6]
        number = 6 * index + 2
        if block[1] not in ("0", "1", "2", "3"):
            raise TandemError(f"{source}:{number}: gold must be 0-3, got {block[1]!r}")
        samples.append(
            mc_sample(
                str(index),
                _fix_text_line(block[0]),
                [_fix_text_line(line) for line in block[2:]],
                int(block[1]),
                source_format="text",
            )
        )
    return samples


def _load(data_dir: Path | None) -> list[Sample]:
    if data_dir is None:
        rows = load_from_hub("hellaswag", "Rowan/hellaswag", None, "validation")
        return _from_raw(Path("Rowan/hellaswag"), list(enumerate(rows, start=1)))
    source = find_data_file(
        data_dir,
        "hellaswag",
        ["hellaswag_val.jsonl", "hellaswag_val_full.txt.bz2", "hellaswag_val_full.txt"],
    )
    if source.suffix == ".jsonl":
        return _from_raw(source, list(read_jsonl(source)))
    return _from_text(source)


def _train(data_dir: Path | None) -> list[Sample]:
    """lm-eval's few-shot pool: the train split, raw rows (hellaswag_train.jsonl)."""
    if data_dir is None:
        rows = load_from_hub("hellaswag", "Rowan/hellaswag", None, "train")
        return _from_raw(Path("Rowan/hellaswag"), list(enumerate(rows, start=1)))
    try:
        source = find_data_file(data_dir, "hellaswag", ["hellaswag_train.jsonl"])
    except TandemError as error:
        raise TandemError(
            f"{error}. HellaSwag's few-shot examples come from its train split (39,905 rows, "
            "rowanz/hellaswag data/hellaswag_train.jsonl), which is not in the shared data "
            "folder: put that file in --data-dir, run without --data-dir to read it from the "
            "hub, or set num_fewshot = { hellaswag = 0 }"
        ) from error
    return _from_raw(source, list(read_jsonl(source)))


# Two file formats (raw JSONL or llama.cpp's text copy), so not a plain choice_task.
HELLASWAG = TaskDef(
    name="hellaswag",
    kind="multiple_choice",
    description="HellaSwag validation (10042 sentence endings), acc and acc_norm",
    loader=_load,
    scorer="choices",
    metrics=CHOICE_METRICS,
    headline="acc_norm",
    fewshot=Fewshot(pool=_train, exemplar=answer_exemplar, draws_extra=True),
)
