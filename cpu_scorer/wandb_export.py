"""``tandem export wandb RUN...``: runs to Weights & Biases, as lm-eval's W&B logging does.

Per tandem run, one W&B run named after it: its config (the spec, the model's hashes,
what the workers resolved), its metrics (``<task>/<metric>``, with ``_stderr``), the
telemetry (``<task>/telemetry/<key>``), a table per nested metric (IFEval's pass rate
per instruction, MMLU's per subject) and a samples table per task (id, verdict, prompt,
response, metrics; at most ``max_samples`` rows per task).

``step_from="sweep"``: runs that share a ``sweep`` in their spec go into one W&B run
named after the sweep, each logged at its ``step`` (lm-eval's ``step=``), so W&B draws
the curves; the tables are those of the last step. Runs without a sweep or a step are
refused, naming them.

``wandb`` is an optional extra (``pip install 'tandem-eval[wandb]'``) imported only
here, only when exporting. ``WANDB_MODE=offline`` writes the runs to ``WANDB_DIR``
without network (what the tests do); ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from cpu_scorer import _queries
from cpu_scorer._sweeps import sweep_of
from cpu_scorer.report import breakdown_table
from cpu_scorer.summary import compute_summary
from shared.errors import TandemError
from shared.records import RunRecord, Summary
from shared.store import Store, check_run_id

_SAMPLE_COLUMNS = ["sample_id", "passed", "prompt", "response", "metrics"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _summary(store: Store, run_id: str) -> Summary:
    try:
        return store.summary(run_id) or compute_summary(store, run_id)
    except TandemError as error:
        raise TandemError(f"run {run_id!r}: {error}") from error


def metrics_of(summary: Summary) -> dict[str, float]:
    """Flat W&B keys: ``<task>/<metric>`` for numbers, ``<task>/telemetry/<key>``."""
    out: dict[str, float] = {}
    for task, entry in summary.tasks.items():
        for name, value in entry.metrics.items():
            if _number(value):
                out[f"{task}/{name}"] = float(value)
        for name, value in entry.telemetry.items():
            if _number(value):
                out[f"{task}/telemetry/{name}"] = float(value)
        out[f"{task}/samples_scored"] = float(entry.samples_scored)
    return out


def _config(record: RunRecord, summary: Summary) -> dict[str, Any]:
    return {
        "tandem_run_id": record.run_id,
        "spec": record.spec,
        "spec_hash": record.spec_hash,
        "model": record.model.model_dump(),
        "precision": summary.precision or record.resolved_precision,
        "workers": [w.model_dump() for w in summary.workers or record.workers],
        "git_sha": record.environment.git_sha,
        "scorer_version": summary.scorer_version,
    }


def _samples(store: Store, run_id: str, task: str, limit: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for table in _queries.export_batches(store, run_id, [task]):
        for row in table.to_pylist():
            metrics = dict(row["metrics"]) if row["metrics"] is not None else {}
            rows.append(
                [
                    row["sample_id"],
                    row["passed"],
                    row["prompt"],
                    row["response"],
                    json.dumps(metrics),
                ]
            )
            if len(rows) >= limit:
                return rows
    return rows


def _tables(wandb: Any, store: Store, run_id: str, summary: Summary, max_samples: int) -> dict:
    """Per nested metric a (name, value) table; per task a samples table."""
    logged: dict[str, Any] = {}
    for task, entry in summary.tasks.items():
        for name, value in entry.metrics.items():
            if isinstance(value, dict):
                headers, rows = breakdown_table(value)
                if rows:
                    if headers == ["name", "value"]:
                        headers = ["name", name]
                    logged[f"{task}/{name}"] = wandb.Table(columns=headers, data=rows)
        if max_samples > 0:
            rows = _samples(store, run_id, task, max_samples)
            if rows:
                logged[f"{task}/samples"] = wandb.Table(columns=_SAMPLE_COLUMNS, data=rows)
    return logged


def _wandb_id(name: str) -> str:
    """A W&B run id from a tandem name (ids allow letters, digits, ``-`` and ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64]


def export_wandb(
    store: Store,
    run_ids: list[str],
    *,
    project: str = "tandem",
    entity: str | None = None,
    step_from: str | None = None,
    max_samples: int = 1000,
) -> list[dict[str, Any]]:
    """Log ``run_ids`` to W&B (see the module docstring); returns what was logged per
    W&B run: its name, the tandem runs in it, and its directory."""
    if step_from not in (None, "sweep"):
        raise TandemError(f"--step-from must be 'sweep', got {step_from!r}")
    records = {}
    for run_id in run_ids:
        records[check_run_id(run_id)] = _queries.require_run(store, run_id)
    try:
        import wandb
    except ImportError as error:
        raise TandemError(
            "exporting to W&B needs wandb: pip install 'tandem-eval[wandb]'"
        ) from error
    groups: list[tuple[str, list[tuple[str, float | None]]]]
    if step_from == "sweep":
        by_sweep: dict[str, list[tuple[str, float | None]]] = {}
        missing = []
        for run_id, record in records.items():
            sweep, step = sweep_of(record)
            if sweep is None or step is None:
                missing.append(run_id)
                continue
            by_sweep.setdefault(sweep, []).append((run_id, step))
        if missing:
            raise TandemError(
                f"--step-from sweep: run(s) {', '.join(missing)} have no sweep and step in "
                "their spec; export them without --step-from"
            )
        groups = [(name, sorted(runs, key=lambda r: r[1] or 0)) for name, runs in by_sweep.items()]
    else:
        groups = [(run_id, [(run_id, None)]) for run_id in records]
    done = []
    for name, members in groups:
        summaries = {run_id: _summary(store, run_id) for run_id, _ in members}
        last = members[-1][0]
        config = _config(records[last], summaries[last])
        if step_from == "sweep":
            config = {"sweep": name, "runs": [run_id for run_id, _ in members], **config}
        run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            id=_wandb_id(name),
            config=config,
            job_type="eval",
            reinit="create_new",
        )
        try:
            for run_id, step in members:
                metrics = metrics_of(summaries[run_id])
                if step is None:
                    run.log(metrics)
                else:
                    run.log({**metrics, "tandem_run": run_id}, step=int(step))
            tables = _tables(wandb, store, last, summaries[last], max_samples)
            if tables and step_from:
                run.log(tables, step=int(members[-1][1] or 0))
            elif tables:
                run.log(tables)
            for key, value in metrics_of(summaries[last]).items():
                run.summary[key] = value
            directory = run.dir
        finally:
            run.finish()
        done.append({"name": name, "runs": [r for r, _ in members], "dir": directory})
    return done
