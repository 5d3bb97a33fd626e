"""Plain-text score tables for the terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from shared.records import Summary, read_summary
from shared.tasks import TASKS

# For a task this tandem does not know: its numbers in this order.
_FALLBACK = ("acc", "acc_norm")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _shown(task: str, metrics: dict[str, Any]) -> list[str]:
    """The task's declared scalar metrics, in its order (IFEval: its four accuracies)."""
    names = [m.name for m in TASKS[task].metrics] if task in TASKS else list(_FALLBACK)
    return [n for n in names if isinstance(metrics.get(n), (int, float))]


def _rate(telemetry: dict[str, Any]) -> str:
    """Throughput with its unit: tokens/s for generation, samples/s for log-prob tasks."""
    if telemetry.get("tokens_per_second"):
        return f"{telemetry['tokens_per_second']:.1f} tok/s"
    if telemetry.get("samples_per_second"):
        return f"{telemetry['samples_per_second']:.2f} smp/s"
    return ""


def print_summary(summary: Summary | dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up now: a caller may have replaced sys.stdout
    if not isinstance(summary, Summary):
        summary = read_summary(summary)
    lines = [f"== {summary.run_id}  ({summary.model}, {summary.precision})"]
    header = f"{'task':<12} {'metric':<26} {'value':>9} {'± stderr':>9} {'n':>6} {'rate':>12}"
    lines.append(header)
    lines.append("-" * len(header))
    for task, entry in summary.tasks.items():
        metrics = entry.metrics
        rate_text = _rate(entry.telemetry)
        shown = _shown(task, metrics)
        if not shown:
            lines.append(
                f"{task:<12} {'(no scores yet)':<26} {'':>9} {'':>9} {entry.samples_scored:>6}"
            )
        for i, name in enumerate(shown):
            stderr = metrics.get(name + "_stderr")
            lines.append(
                f"{task if i == 0 else '':<12} {name:<26} {_fmt(metrics[name]):>9} "
                f"{_fmt(stderr) if stderr is not None else '':>9} "
                f"{entry.samples_scored if i == 0 else '':>6} "
                f"{rate_text if i == 0 else '':>12}"
            )
        for note in entry.notes:
            lines.append(f"{'':<12} note: {note}")
    print("\n".join(lines), file=out)
