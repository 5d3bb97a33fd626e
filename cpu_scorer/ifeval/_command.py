"""``tandem ifeval``: score IFEval responses produced by any system (Google's JSONL format).

    tandem ifeval --input-data input_data.jsonl --responses responses.jsonl \\
        --output verdicts.jsonl [--summary summary.json] [--workers N]

Each response line (``{"prompt": ..., "response": ..., ...}``) is matched to its input
row by exact prompt text. The output has one line per response line, in the same order:
the response line's fields without ``response``, with the input row's ``key`` and
``instruction_id_list`` and the four verdict fields, as Google's evaluation writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import TandemError

# Below this many responses a progress bar is only noise.
_PROGRESS_MIN = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-data",
        required=True,
        type=Path,
        metavar="FILE",
        help="the prompts: JSONL with key, prompt, instruction_id_list, kwargs",
    )
    parser.add_argument(
        "--responses",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSONL with prompt and response per line (other fields are kept)",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSONL of verdicts, one line per response line",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="write the four metrics as JSON here instead of to stderr",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes to score with (default: every core, for large inputs)",
    )


def run(args: argparse.Namespace) -> int:
    from cpu_scorer import ifeval

    inputs = _read_input_data(args.input_data)
    lines = list(_read_jsonl(args.responses))
    items, keys = [], []
    for number, line in lines:
        prompt = _field(args.responses, number, line, "prompt")
        response = _field(args.responses, number, line, "response")
        row = inputs.get(prompt)
        if row is None:
            raise TandemError(
                f"{args.responses}:{number}: prompt not found in {args.input_data} "
                f"(matched by exact text): {_preview(prompt)}{_closest(prompt, inputs)}"
            )
        items.append((prompt, response, row["instruction_id_list"], row["kwargs"]))
        keys.append(row["key"])

    progress = _Progress(len(items)) if len(items) >= _PROGRESS_MIN else None
    try:
        verdicts = ifeval.evaluate_many(items, workers=args.workers, progress=progress)
    finally:
        if progress:
            progress.close()

    out_lines = []
    for (_number, line), key, item, verdict in zip(lines, keys, items, verdicts, strict=True):
        fields = {name: value for name, value in line.items() if name not in ("key", "response")}
        out_lines.append(
            json.dumps(
                {
                    "key": key,
                    **fields,
                    "instruction_id_list": list(item[2]),
                    "prompt_level_strict_acc": verdict.prompt_strict,
                    "inst_level_strict_acc": list(verdict.strict),
                    "prompt_level_loose_acc": verdict.prompt_loose,
                    "inst_level_loose_acc": list(verdict.loose),
                }
            )
        )
    _write_atomically(args.output, "".join(f"{line}\n" for line in out_lines))

    answered = set(keys)
    unanswered = sorted(row["key"] for row in inputs.values() if row["key"] not in answered)
    if unanswered:
        shown = ", ".join(map(str, unanswered[:20])) + (" ..." if len(unanswered) > 20 else "")
        print(
            f"{len(unanswered)} of {len(inputs)} input prompts have no response (keys: {shown})",
            file=sys.stderr,
        )
    metrics = ifeval.aggregate(verdicts) if verdicts else {}
    if args.summary:
        summary = {
            **metrics,
            "responses": len(verdicts),
            "instructions": sum(len(v.strict) for v in verdicts),
            "prompts_without_response": unanswered,
        }
        _write_atomically(args.summary, json.dumps(summary, indent=2) + "\n")
    else:
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}", file=sys.stderr)
    return 0


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as error:
        raise TandemError(f"cannot read {path}: {error.strerror}") from error
    with f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise TandemError(f"{path}:{number}: not valid JSON: {error.msg}") from error
            if not isinstance(value, dict):
                raise TandemError(f"{path}:{number}: expected a JSON object per line")
            yield number, value


def _field(path: Path, number: int, line: dict[str, Any], name: str) -> Any:
    if name not in line:
        raise TandemError(f"{path}:{number}: missing field {name!r}")
    if not isinstance(line[name], str):
        raise TandemError(
            f"{path}:{number}: field {name!r} must be a string, got {type(line[name]).__name__}"
        )
    return line[name]


def _read_input_data(path: Path) -> dict[str, dict[str, Any]]:
    """Input rows by prompt text, every instruction validated now (before any scoring)."""
    from cpu_scorer.ifeval import _evaluate

    rows: dict[str, dict[str, Any]] = {}
    for number, row in _read_jsonl(path):
        for name, kind in (
            ("key", int),
            ("prompt", str),
            ("instruction_id_list", list),
            ("kwargs", list),
        ):
            if name not in row:
                raise TandemError(f"{path}:{number}: missing field {name!r}")
            if not isinstance(row[name], kind) or isinstance(row[name], bool):
                raise TandemError(
                    f"{path}:{number}: field {name!r} must be {kind.__name__}, "
                    f"got {type(row[name]).__name__}"
                )
        try:
            _evaluate.prepare("", row["instruction_id_list"], row["kwargs"])
        except TandemError as error:
            raise TandemError(f"{path}:{number} (key {row['key']}): {error}") from error
        if row["prompt"] in rows:
            raise TandemError(
                f"{path}:{number}: key {row['key']} repeats the prompt of key "
                f"{rows[row['prompt']]['key']}; responses are matched by prompt text"
            )
        rows[row["prompt"]] = row
    if not rows:
        raise TandemError(f"{path}: no input rows")
    return rows


def _preview(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _closest(prompt: str, inputs: dict[str, dict[str, Any]]) -> str:
    """A hint naming the input prompt that differs least, if one is close."""
    import difflib

    close = difflib.get_close_matches(prompt, list(inputs), n=1, cutoff=0.9)
    if not close:
        return ""
    return f"; closest is key {inputs[close[0]]['key']}: {_preview(close[0])}"


class _Progress:
    """A tqdm bar on stderr, made at the first call rather than before scoring starts:
    tqdm runs a monitor thread, and workers are only forked from a single-threaded
    process (see ``_parallel``)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None

    def __call__(self, done: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="response", desc="ifeval", file=sys.stderr)
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_atomically(path: Path, text: str) -> None:
    """Temp file, fsync, rename (the store's one publish routine): never half a file."""
    from shared.store import Store

    path = path.resolve()
    try:
        Store(str(path.parent)).publish_bytes(str(path), text.encode("utf-8"))
    except OSError as error:
        raise TandemError(f"cannot write {path}: {error.strerror or error}") from error
