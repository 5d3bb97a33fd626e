"""PIQA (physical commonsense), validation split, scored as lm-eval's ``piqa.yaml``.

Context ``"Question: {goal}\\nAnswer:"``, continuations ``" " + sol1`` and ``" " + sol2``,
gold = label (0 -> sol1). No preprocessing. The local copy is the original release:
``valid.jsonl`` (goal, sol1, sol2) and ``valid-labels.lst`` (one label per line, same order).
"""

from __future__ import annotations

from pathlib import Path

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
from shared.tasks._mc import check_gold, mc_sample


def render_piqa(goal: str) -> str:
    return f"Question: {goal}\nAnswer:"


def _read_labels(path: Path) -> list[int]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TandemError(f"cannot read {path}: {error.strerror}") from error
    labels = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.strip() not in ("0", "1"):
            raise TandemError(f"{path}:{number}: a label must be 0 or 1, got {line!r}")
        labels.append(int(line))
    return labels


def _samples(source: Path, numbered: Numbered) -> list[Sample]:
    samples = []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, {"goal": str, "sol1": str, "sol2": str})
        samples.append(
            mc_sample(
                str(index),
                render_piqa(row["goal"]),
                [row["sol1"], row["sol2"]],
                check_gold(source, number, row.get("label"), 2),
            )
        )
    return samples


def _load(data_dir: Path | None) -> list[Sample]:
    if data_dir is None:
        rows = load_from_hub("piqa", "baber/piqa", None, "validation")
        return _samples(Path("baber/piqa"), list(enumerate(rows, start=1)))
    source = find_data_file(data_dir, "piqa", ["valid.jsonl"])
    labels_path = find_data_file(data_dir, "piqa", ["valid-labels.lst"])
    numbered = list(read_jsonl(source))
    labels = _read_labels(labels_path)
    if len(labels) != len(numbered):
        raise TandemError(
            f"{labels_path} has {len(labels)} labels but {source} has {len(numbered)} rows; "
            "they must pair line by line"
        )
    for (_, row), label in zip(numbered, labels, strict=True):
        row["label"] = label
    return _samples(source, numbered)


# Labels live in a second file, so not a plain choice_task.
PIQA = TaskDef(
    name="piqa",
    kind="multiple_choice",
    description="PIQA validation (1838 physical-commonsense pairs), acc and acc_norm",
    loader=_load,
    scorer="choices",
    metrics=CHOICE_METRICS,
    headline="acc_norm",
)
