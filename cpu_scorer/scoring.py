"""Score generation shards and summarize runs. Pure functions of the store's contents.

A score shard is a pure function of its generation shard and SCORER_VERSION: its
provenance is copied from the generation shard (no wall-clock time), so two scorers
racing on one shard write byte-identical files.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from shared.errors import TandemError
from shared.schema import make_table, provenance_of, upgrade
from shared.store import ShardRef, Store

SCORER_VERSION = "1"


@dataclass(frozen=True)
class SummaryOptions:
    """Optional inputs to aggregation. irt_params: path to tinyBenchmarks.pkl."""

    irt_params: str | None = None


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _load_doc(row: dict[str, Any]) -> dict[str, Any]:
    try:
        doc = json.loads(row["doc"] or "{}")
    except json.JSONDecodeError as error:
        raise TandemError(f"sample {row['sample_id']}: doc column is not JSON") from error
    if not isinstance(doc, dict):
        raise TandemError(f"sample {row['sample_id']}: doc column is not a JSON object")
    return doc


def _score_row_base(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "task": row["task"],
        "sample_id": row["sample_id"],
        "metrics": [],
        "instruction_id_list": None,
        "inst_level_strict": None,
        "inst_level_loose": None,
        "prediction": None,
        "scorer_version": SCORER_VERSION,
        "error": row.get("error"),
    }


def _score_ifeval(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from cpu_scorer import ifeval

    docs = [_load_doc(r) for r in rows]
    for row, doc in zip(rows, docs, strict=True):
        if not doc.get("instruction_id_list"):
            raise TandemError(f"ifeval sample {row['sample_id']}: no instructions to check")
    todo = [i for i, r in enumerate(rows) if not r.get("error")]
    verdicts = ifeval.evaluate_many(
        [
            (
                rows[i]["prompt"],
                rows[i]["response"],
                docs[i]["instruction_id_list"],
                docs[i]["kwargs"],
            )
            for i in todo
        ]
    )
    out = [_score_row_base(r) for r in rows]
    for index, verdict in zip(todo, verdicts, strict=True):
        strict, loose = list(verdict.strict), list(verdict.loose)
        out[index].update(
            instruction_id_list=docs[index]["instruction_id_list"],
            inst_level_strict=strict,
            inst_level_loose=loose,
            metrics=[
                ("prompt_level_strict_acc", float(all(strict))),
                ("inst_level_strict_acc", sum(strict) / len(strict)),
                ("prompt_level_loose_acc", float(all(loose))),
                ("inst_level_loose_acc", sum(loose) / len(loose)),
            ],
        )
    return out


def _score_choices(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from cpu_scorer import multiple_choice

    out = []
    for row in rows:
        scored = _score_row_base(row)
        if not row.get("error"):
            doc = _load_doc(row)
            choice_texts = doc.get("choice_texts") or [c.lstrip(" ") for c in row["choices"]]
            result = multiple_choice.score_row(row["logprobs"], choice_texts, row["gold"])
            scored["metrics"] = sorted(result["metrics"].items())
            scored["prediction"] = result["prediction"]
        out.append(scored)
    return out


def _score_rolling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        scored = _score_row_base(row)
        if not row.get("error"):
            scored["metrics"] = [
                ("bytes", float(row["bytes"])),
                ("logprob", float(row["logprob"])),
                ("tokens", float(row["tokens"])),
                ("words", float(row["words"])),
            ]
        out.append(scored)
    return out


# Generation tasks need a task-specific checker; log-prob kinds score the same way for
# every task.
GENERATION_SCORERS: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "ifeval": _score_ifeval,
}
KIND_SCORERS = {"loglikelihoods": _score_choices, "rolling": _score_rolling}


def score_table(generation: pa.Table) -> pa.Table:
    """Score one generation shard (any schema version) into a scores table."""
    kind, generation = upgrade(generation)
    rows = _rows(generation)
    tasks = {r["task"] for r in rows}
    if kind == "generations":
        if len(tasks) > 1:
            raise TandemError(f"generation shard mixes tasks {sorted(tasks)}")
        task = next(iter(tasks), "")
        if task not in GENERATION_SCORERS and rows:
            raise TandemError(
                f"no scorer for generation task {task!r}; scorers exist for "
                f"{sorted(GENERATION_SCORERS)}"
            )
        scored = GENERATION_SCORERS[task](rows) if rows else []
    elif kind in KIND_SCORERS:
        scored = KIND_SCORERS[kind](rows)
    else:
        raise TandemError(f"a {kind} file is not a generation shard")
    return make_table("scores", scored, provenance_of(generation))


# ---- one-shot scoring of a store ---------------------------------------------------------
# What makes a shard unusable (corrupt, truncated, wrong schema, bad rows): such a shard is
# quarantined. The daemon uses the same tuple, but treats a plain OSError while *reading*
# as possibly transient (a network store hiccup) and retries before quarantining.
QUARANTINE_ERRORS = (TandemError, pa.ArrowException, OSError, KeyError, ValueError, TypeError)


def pending_shards(store: Store, run_id: str) -> list[ShardRef]:
    """Generation shards with neither a score shard nor a quarantine record."""
    pending = []
    for task in store.list_tasks(run_id, "generations"):
        scored = {r.name for r in store.list_shards(run_id, "scores", task)}
        quarantined = {
            name.split(".")[0]
            for name in store.list_names(store.run_path(run_id, "quarantine", task))
        }
        for ref in store.list_shards(run_id, "generations", task):
            if ref.name not in scored and ref.name not in quarantined:
                pending.append(ref)
    return pending


def score_shard(store: Store, ref: ShardRef) -> str:
    """Score one shard; returns "scored" or "quarantined". Never deletes anything."""
    source = store.shard_path("generations", ref)
    try:
        table = store.read_table(source)
        scores = score_table(table)
    except QUARANTINE_ERRORS as error:
        quarantine(store, ref, error)
        return "quarantined"
    store.publish_table(store.shard_path("scores", ref), scores)
    return "scored"


def quarantine(store: Store, ref: ShardRef, error: BaseException) -> None:
    """Move an unreadable shard aside with an error record; the data is kept, not deleted."""
    source = store.shard_path("generations", ref)
    target = store.shard_path("quarantine", ref)
    record = {
        "run_id": ref.run_id,
        "task": ref.task,
        "shard": ref.name,
        "source": source,
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception_only(type(error), error)).strip(),
        "scorer_version": SCORER_VERSION,
    }
    store.publish_json(store.shard_path("quarantine", ref, ".error.json"), record)
    if store.exists(source):
        store.move(source, target)


# ---- summaries ---------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stderr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var / len(values))


def aggregate_task(
    task: str, rows: list[dict[str, Any]], options: SummaryOptions
) -> dict[str, Any]:
    """Aggregate metrics for one task from its score rows (errors excluded and counted)."""
    ok = [r for r in rows if not r["error"]]
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    if ok and ok[0]["instruction_id_list"] is not None:
        strict = [v for r in ok for v in r["inst_level_strict"]]
        loose = [v for r in ok for v in r["inst_level_loose"]]
        metrics = {
            "prompt_level_strict_acc": _mean([float(all(r["inst_level_strict"])) for r in ok]),
            "inst_level_strict_acc": _mean([float(v) for v in strict]),
            "prompt_level_loose_acc": _mean([float(all(r["inst_level_loose"])) for r in ok]),
            "inst_level_loose_acc": _mean([float(v) for v in loose]),
        }
        by_type: dict[str, list[int]] = {}
        for r in ok:
            for name, passed in zip(r["instruction_id_list"], r["inst_level_strict"], strict=True):
                by_type.setdefault(name, []).append(int(passed))
        metrics["by_instruction"] = {k: _mean(v) for k, v in sorted(by_type.items())}
    elif ok and dict(ok[0]["metrics"]).keys() >= {"logprob", "tokens"}:
        from cpu_scorer import perplexity

        metrics = perplexity.aggregate([dict(r["metrics"]) for r in ok])
    elif ok:
        names = sorted({k for r in ok for k, _ in r["metrics"]})
        for name in names:
            values = [dict(r["metrics"])[name] for r in ok if name in dict(r["metrics"])]
            metrics[name] = _mean(values)
            metrics[f"{name}_stderr"] = _stderr(values)
        if task == "tinymmlu":
            metrics.update(_tinymmlu_irt(ok, options, notes))
        if task == "mrpc":
            metrics["f1"] = _binary_f1(ok)
    return {
        "metrics": metrics,
        "samples_scored": len(ok),
        "samples_failed": len(rows) - len(ok),
        "notes": notes,
    }


def _binary_f1(rows: list[dict[str, Any]]) -> float:
    """lm-eval's MRPC f1 (class 1 positive). Score rows keep the prediction and acc; for a
    two-way task the gold label follows from them."""
    from cpu_scorer import multiple_choice

    predictions = [r["prediction"] for r in rows]
    golds = [
        p if dict(r["metrics"])["acc"] == 1.0 else 1 - p
        for p, r in zip(predictions, rows, strict=True)
    ]
    return multiple_choice.f1(predictions, golds)


def _tinymmlu_irt(rows: list[dict[str, Any]], options: SummaryOptions, notes: list[str]) -> dict:
    if not options.irt_params:
        notes.append(
            "IRT, p-IRT and gp-IRT need tinyBenchmarks.pkl (pass --irt-params PATH); accuracy only"
        )
        return {}
    if len(rows) != 100:
        notes.append(f"IRT estimates need all 100 tinyMMLU items, have {len(rows)}")
        return {}
    from cpu_scorer import irt

    ordered = sorted(rows, key=lambda r: int(r["sample_id"]))
    correct = [dict(r["metrics"])["acc_norm"] for r in ordered]
    return irt.estimate(irt.load_params(options.irt_params), correct)


def _telemetry(store: Store, refs: list[ShardRef]) -> dict[str, Any]:
    tokens = prompt_tokens = 0
    seconds = 0.0
    samples = 0
    for ref in refs:
        try:
            table = store.read_table(store.shard_path("generations", ref))
        except (pa.ArrowException, OSError):
            continue
        names = table.column_names
        samples += table.num_rows
        if "batch_seconds" not in names:
            continue
        share = table.column("batch_seconds").to_pylist()
        sizes = (
            table.column("batch_size").to_pylist() if "batch_size" in names else [1] * len(share)
        )
        # Each row carries its batch's wall time and the requests the batch held; a row
        # is one request, or one per choice, and its share is time x its requests / size.
        requests = (
            [len(c or ()) or 1 for c in table.column("choices").to_pylist()]
            if "choices" in names
            else [1] * len(share)
        )
        seconds += sum(
            s * k / max(1, n)
            for s, n, k in zip(share, sizes, requests, strict=True)
            if s is not None
        )
        if "generated_tokens" in names:
            tokens += sum(v or 0 for v in table.column("generated_tokens").to_pylist())
        if "prompt_tokens" in names:
            prompt_tokens += sum(v or 0 for v in table.column("prompt_tokens").to_pylist())
    telemetry: dict[str, Any] = {
        "samples_generated": samples,
        "model_seconds": round(seconds, 3),
        "prompt_tokens": prompt_tokens,
    }
    if tokens:
        telemetry["generated_tokens"] = tokens
        telemetry["tokens_per_second"] = round(tokens / seconds, 2) if seconds else None
    if samples and seconds:
        telemetry["samples_per_second"] = round(samples / seconds, 3)
    return telemetry


def compute_summary(
    store: Store, run_id: str, options: SummaryOptions | None = None
) -> dict[str, Any]:
    """summary.json's content for a run: a pure function of its shards, published by none.

    Each folder is listed once and the counts under ``shards`` come from the very
    listings the metrics were computed from, so a summary is never newer in its counts
    than in its numbers (the daemon compares those counts with the store to tell a
    stale summary from a fresh one).
    """
    options = options or SummaryOptions()
    record = store.read_run(run_id)
    expected = record.get("tasks", {})
    tasks: dict[str, Any] = {}
    for task in sorted(set(expected) | set(store.list_tasks(run_id, "generations"))):
        generated = store.list_shards(run_id, "generations", task)
        scored = store.list_shards(run_id, "scores", task)
        quarantined = [
            n
            for n in store.list_names(store.run_path(run_id, "quarantine", task))
            if n.endswith(".error.json")
        ]
        rows: list[dict[str, Any]] = []
        for ref in scored:
            rows.extend(_rows(store.read_table(store.shard_path("scores", ref))))
        entry = aggregate_task(task, rows, options)
        entry["samples_total"] = expected.get(task, {}).get("samples")
        entry["shards"] = {
            "generated": len(generated),
            "scored": len(scored),
            "quarantined": len(quarantined),
        }
        entry["telemetry"] = _telemetry(store, generated)
        entry["complete"] = entry["samples_total"] is not None and (
            entry["samples_scored"] + entry["samples_failed"] == entry["samples_total"]
        )
        tasks[task] = entry
    return {
        "schema": "tandem.summary",
        "schema_version": 1,
        "run_id": run_id,
        "model": record.get("model", {}).get("model_id"),
        "precision": record.get("spec", {}).get("precision"),
        "scorer_version": SCORER_VERSION,
        "tasks": tasks,
    }


def summarize(store: Store, run_id: str, options: SummaryOptions | None = None) -> dict[str, Any]:
    """Recompute summary.json for a run from its score shards and publish it."""
    summary = compute_summary(store, run_id, options)
    store.publish_json(store.run_path(run_id, "summary.json"), summary)
    return summary


def score_store(
    store: Store,
    run_id: str | None = None,
    options: SummaryOptions | None = None,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """One-shot: score every unscored shard of one run (or all runs), then summarize."""
    from tqdm import tqdm

    runs = [run_id] if run_id else store.list_runs()
    if run_id:
        store.read_run(run_id)  # clear error for an unknown run
    counts: dict[str, dict[str, int]] = {}
    for rid in runs:
        pending = pending_shards(store, rid)
        tally = {"scored": 0, "quarantined": 0}
        for ref in tqdm(
            pending, desc=f"score {rid}", unit="shard", disable=not progress, file=sys.stderr
        ):
            tally[score_shard(store, ref)] += 1
        summarize(store, rid, options)
        counts[rid] = tally
    return counts
