"""What a task is: a named, ordered list of samples and how the worker must run them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.errors import TandemError

# generate: free-form generation (IFEval). multiple_choice: per-choice log-likelihoods.
# rolling: log-likelihood of whole texts (perplexity).
OutputType = Literal["generate", "multiple_choice", "rolling"]


@dataclass(frozen=True)
class Sample:
    """One evaluation item, in the task's canonical order.

    ``prompt`` is the user prompt (generate), the context (multiple_choice) or the text
    (rolling). ``choices`` are the continuations exactly as scored, leading space
    included. ``contexts``, when set, gives one context per choice instead of the
    shared ``prompt`` (WinoGrande's partial evaluation: the option is in the context,
    the continuation after the blank is shared). ``doc`` holds whatever the scorer
    needs later (instruction kwargs, choice texts for acc_norm); it is written into
    every generation row as JSON, so a shard can be scored without the original data.
    """

    sample_id: str
    prompt: str
    choices: tuple[str, ...] = ()
    gold: int | None = None
    contexts: tuple[str, ...] = ()
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskDef:
    name: str
    output: OutputType
    description: str
    # load(data_dir) -> samples in canonical order; data_dir None means the HF hub.
    loader: Callable[[Path | None], list[Sample]]
    # Whether an instruct model's chat template applies under chat_template="auto".
    # lm-eval scores log-likelihood tasks on the raw text unless told otherwise.
    chat_by_default: bool = False


def load_samples(task: TaskDef, data_dir: str | Path | None, limit: int | None) -> list[Sample]:
    """The first ``limit`` samples of a task (a fixed prefix, so runs stay comparable)."""
    samples = task.loader(Path(data_dir).expanduser() if data_dir else None)
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise TandemError(f"task {task.name}: duplicate sample ids in the data")
    return samples[:limit] if limit else samples


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; TandemError naming file and line."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise TandemError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise TandemError(f"{path}:{number}: not valid JSON: {error.msg}") from error
            if not isinstance(obj, dict):
                raise TandemError(f"{path}:{number}: expected a JSON object per line")
            yield number, obj


def require_fields(path: Path, number: int, obj: dict[str, Any], fields: dict[str, type]) -> None:
    for name, kind in fields.items():
        if name not in obj:
            raise TandemError(f"{path}:{number}: missing field {name!r}")
        if not isinstance(obj[name], kind):
            raise TandemError(
                f"{path}:{number}: field {name!r} must be {kind.__name__}, "
                f"got {type(obj[name]).__name__}"
            )


def find_data_file(data_dir: Path, task: str, candidates: list[str]) -> Path:
    """Locate a task's file under data_dir (either data_dir/<task>/<file> or data_dir/<file>)."""
    for name in candidates:
        for path in (data_dir / name, data_dir / task / name):
            if path.is_file():
                return path
    raise TandemError(
        f"task {task}: none of {candidates} found in {data_dir} or {data_dir / task}; "
        "point --data-dir (or data_dir in the spec) at a folder holding them"
    )


def load_from_hub(task: str, path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset, for users without a local copy (needs `datasets`)."""
    try:
        import datasets  # optional; only when no data_dir is given
    except ImportError as error:
        raise TandemError(
            f"task {task}: no data_dir given and the `datasets` package is not installed; "
            "either pass --data-dir pointing at a local copy, or pip install datasets"
        ) from error
    try:
        return list(datasets.load_dataset(path, name, split=split))
    except Exception as error:  # network, auth, missing dataset: all user-actionable
        raise TandemError(
            f"task {task}: could not load {path} from the Hugging Face hub ({error}); "
            "pass --data-dir pointing at a local copy instead"
        ) from error
