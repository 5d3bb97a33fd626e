"""Plain-text score tables for the terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

# The headline metrics per kind of task, in display order.
HEADLINE = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
    "acc",
    "acc_norm",
    "f1",
    "irt",
    "pirt",
    "gpirt",
    "word_perplexity",
    "token_perplexity",
    "bits_per_byte",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def print_summary(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    lines = [f"== {summary['run_id']}  ({summary.get('model')}, {summary.get('precision')})"]
    # The last column is tokens/s for generation tasks, samples/s for log-prob tasks.
    header = f"{'task':<12} {'metric':<26} {'value':>9} {'± stderr':>9} {'n':>6} {'tokens/s':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for task, entry in summary["tasks"].items():
        metrics = entry["metrics"]
        telemetry = entry.get("telemetry", {})
        if telemetry.get("tokens_per_second"):
            rate_text = f"{telemetry['tokens_per_second']:.1f}"
        elif telemetry.get("samples_per_second"):
            rate_text = f"{telemetry['samples_per_second']:.2f} smp/s"
        else:
            rate_text = ""
        shown = [m for m in HEADLINE if metrics.get(m) is not None]
        if not shown:
            lines.append(
                f"{task:<12} {'(no scores yet)':<26} {'':>9} {'':>9} {entry['samples_scored']:>6}"
            )
        for i, name in enumerate(shown):
            stderr = metrics.get(name + "_stderr")
            lines.append(
                f"{task if i == 0 else '':<12} {name:<26} {_fmt(metrics[name]):>9} "
                f"{_fmt(stderr) if stderr is not None else '':>9} "
                f"{entry['samples_scored'] if i == 0 else '':>6} "
                f"{rate_text if i == 0 else '':>9}"
            )
        for note in entry.get("notes", []):
            lines.append(f"{'':<12} note: {note}")
    print("\n".join(lines), file=out)
