"""``tandem ifeval``: score IFEval responses produced by any system (Google's JSONL format).

    tandem ifeval --input-data input_data.jsonl --responses responses.jsonl \\
        --output verdicts.jsonl [--summary summary.json] [--workers N]

Each response line (``{"prompt": ..., "response": ..., ...}``) is matched to its input
row by exact prompt text. The output has one line per response line, in the same order:
the response line's fields without ``response``, with the input row's ``key`` and
``instruction_id_list`` and the four verdict fields, as Google's evaluation writes them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from shared.errors import TandemError
from shared.jsonl import read_jsonl, require_fields

# Below this many responses a progress bar is only noise. It is drawn only on a terminal:
# in a log or a pipe it is noise too, and importing tqdm costs more (~0.05 s) than
# scoring a few hundred responses.
_PROGRESS_MIN = 1000


def run(
    *,
    input_data: Path,
    responses: Path,
    output: Path,
    summary: Path | None = None,
    workers: int | None = None,
) -> int:
    """Score ``responses`` against ``input_data``; write verdicts to ``output`` (and the
    four metrics to ``summary``, else to stderr). Every input is validated first."""
    begun = time.perf_counter()
    from cpu_scorer import ifeval

    if workers is not None and workers < 1:
        raise TandemError(f"--workers must be a positive number of processes, got {workers}")
    inputs = _read_input_data(input_data)
    lines = list(read_jsonl(responses))
    if not lines:
        raise TandemError(f"{responses}: no responses (the file is empty); nothing to score")
    items, keys = [], []
    for number, line in lines:
        prompt = _field(responses, number, line, "prompt")
        response = _field(responses, number, line, "response")
        row = inputs.get(prompt)
        if row is None:
            raise TandemError(
                f"{responses}:{number}: prompt not found in {input_data} "
                f"(matched by exact text): {_preview(prompt)}{_closest(prompt, inputs)}"
            )
        items.append((prompt, response, row["instruction_id_list"], row["kwargs"]))
        keys.append(row["key"])

    show = len(items) >= _PROGRESS_MIN and sys.stderr is not None and sys.stderr.isatty()
    progress = _Progress(len(items)) if show else None
    started = time.perf_counter()
    try:
        verdicts = ifeval.evaluate_many(items, workers=workers, progress=progress)
    finally:
        if progress:
            progress.close()
    seconds = time.perf_counter() - started

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
    _write_atomically(output, "".join(f"{line}\n" for line in out_lines))
    # Both rates: scoring alone (models loaded on first use included), and the command's
    # whole work from reading the inputs to the verdict file being in place.
    whole = time.perf_counter() - begun
    print(
        f"scored {len(verdicts)} responses in {seconds:.2f} s ({_rate(len(verdicts), seconds)}"
        f" rows/s); {whole:.2f} s with reading, checking and writing"
        f" ({_rate(len(verdicts), whole)} rows/s)",
        file=sys.stderr,
    )

    answered = set(keys)
    unanswered = sorted(row["key"] for row in inputs.values() if row["key"] not in answered)
    if unanswered:
        shown = ", ".join(map(str, unanswered[:20])) + (" ..." if len(unanswered) > 20 else "")
        print(
            f"{len(unanswered)} of {len(inputs)} input prompts have no response (keys: {shown})",
            file=sys.stderr,
        )
    metrics = ifeval.aggregate(verdicts) if verdicts else {}
    if summary is not None:
        record = {
            **metrics,
            "responses": len(verdicts),
            "instructions": sum(len(v.strict) for v in verdicts),
            "prompts_without_response": unanswered,
        }
        _write_atomically(summary, json.dumps(record, indent=2) + "\n")
    else:
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}", file=sys.stderr)
    return 0


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:.0f}" if seconds > 0 else "-"


def _field(path: Path, number: int, line: dict[str, Any], name: str) -> Any:
    require_fields(path, number, line, {name: str})
    return line[name]


def _read_input_data(path: Path) -> dict[str, dict[str, Any]]:
    """Input rows by prompt text, every instruction validated now (before any scoring)."""
    from cpu_scorer.ifeval import _evaluate

    rows: dict[str, dict[str, Any]] = {}
    for number, row in read_jsonl(path):
        require_fields(
            path,
            number,
            row,
            {"key": int, "prompt": str, "instruction_id_list": list, "kwargs": list},
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
    """Temp file, fsync, rename (shared.atomic): never half a file."""
    from shared import atomic

    atomic.write_file(path.resolve(), text.encode("utf-8"))
