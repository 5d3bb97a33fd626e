"""Runs that belong together as one sweep: checkpoints of a training run, each a run.

A run names its sweep and its position in it in its spec (``sweep`` and ``step``, which
the training-loop integration writes; specs written before carry neither). Both are
read defensively: a run whose spec has no string ``sweep`` is in no sweep, and one
without a finite numeric ``step`` is listed but has no point on a curve.
"""

from __future__ import annotations

import math
from typing import Any

from cpu_scorer._queries import Damaged, RunNotFound
from shared.records import RunRecord, Summary
from shared.store import Store


def sweep_of(record: RunRecord) -> tuple[str | None, float | None]:
    """(sweep name, step) of a run, each None when its spec does not say."""
    sweep = record.spec.get("sweep")
    step = record.spec.get("step")
    name = sweep if isinstance(sweep, str) and sweep else None
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        return name, None
    return name, step


def scalar_metrics(summary: Summary | None) -> dict[str, Any]:
    """Per task: its headline, and its numeric metrics with their stderr beside them."""
    out: dict[str, Any] = {}
    for task, entry in (summary.tasks if summary else {}).items():
        values = {
            name: value
            for name, value in entry.metrics.items()
            if _number(value) and not name.endswith("_stderr")
        }
        stderr = {
            name: entry.metrics[f"{name}_stderr"]
            for name in values
            if _number(entry.metrics.get(f"{name}_stderr"))
        }
        out[task] = {"headline": entry.headline, "metrics": values, "stderr": stderr}
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _records(store: Store, records: Any) -> list[tuple[str, RunRecord]]:
    out = []
    for run_id in store.list_runs():
        try:
            out.append((run_id, records.record(store, run_id)))
        except (RunNotFound, Damaged):
            continue  # deleted since the listing, or unreadable: in no sweep
    return out


def list_sweeps(store: Store, records: Any) -> list[dict[str, Any]]:
    """Every sweep in the store: its name, how many runs, how many with a step."""
    sweeps: dict[str, dict[str, Any]] = {}
    for _, record in _records(store, records):
        name, step = sweep_of(record)
        if name is None:
            continue
        entry = sweeps.setdefault(name, {"sweep": name, "runs": 0, "steps": 0})
        entry["runs"] += 1
        entry["steps"] += step is not None
    return [sweeps[name] for name in sorted(sweeps)]


def sweep_points(store: Store, records: Any, sweep: str) -> list[dict[str, Any]]:
    """The runs of ``sweep`` in step order (runs without a step last), each with its
    numeric metrics per task; RunNotFound when no run names that sweep."""
    points = []
    for run_id, record in _records(store, records):
        name, step = sweep_of(record)
        if name != sweep:
            continue
        points.append(
            {
                "run_id": run_id,
                "step": step,
                "created_at": record.created_at or None,
                "tasks": scalar_metrics(records.summary(store, run_id)),
            }
        )
    if not points:
        raise RunNotFound(f"no run in this store belongs to sweep {sweep!r}")
    points.sort(key=lambda p: (p["step"] is None, p["step"] or 0, p["run_id"]))
    return points
