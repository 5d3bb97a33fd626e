"""From scored samples to a task's numbers, by the aggregations its metrics declare.

A task lists its metrics with an aggregation name each (``TaskDef.metrics``, like
lm-eval's ``metric_list``); ``AGGREGATIONS`` maps those names to functions here. Each
function gets the names of the metrics that use it and the task's score rows (rows
with an error excluded) and returns the numbers it computes, so adding a metric kind is
one function and one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.tasks import Metric, TaskDef

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class AggregateOptions:
    """Optional inputs to aggregation. irt_params: path to tinyBenchmarks.pkl."""

    irt_params: str | None = None


@dataclass
class Aggregate:
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stderr(values: list[float]) -> float | None:
    """Sample standard deviation / sqrt(n) (lm-eval's mean_stderr); None for n < 2."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var / len(values))


def mean(names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate) -> None:
    """The mean of a per-sample value over the samples that have it, and its stderr."""
    for name in names:
        values = [m[name] for m in (dict(r["metrics"]) for r in rows) if name in m]
        out.metrics[name] = _mean(values)
        out.metrics[f"{name}_stderr"] = _stderr(values)


# IFEval's instruction-level accuracy is a mean over instructions, not over prompts.
_VERDICT_COLUMN = {
    "inst_level_strict_acc": "inst_level_strict",
    "inst_level_loose_acc": "inst_level_loose",
}


def inst_mean(names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate) -> None:
    for name in names:
        column = _VERDICT_COLUMN[name]
        out.metrics[name] = _mean([float(v) for r in rows for v in r[column] or ()])


def by_instruction(names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate) -> None:
    """Strict pass rate per IFEval instruction id."""
    by_type: dict[str, list[int]] = {}
    for r in rows:
        for name, passed in zip(r["instruction_id_list"], r["inst_level_strict"], strict=True):
            by_type.setdefault(name, []).append(int(passed))
    for name in names:
        out.metrics[name] = {k: _mean(v) for k, v in sorted(by_type.items())}


def f1(names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate) -> None:
    """lm-eval's MRPC f1 (class 1 positive). Score rows keep the prediction and acc; for
    a two-way task the gold label follows from them."""
    from cpu_scorer import multiple_choice

    predictions = [r["prediction"] for r in rows]
    golds = [
        p if dict(r["metrics"])["acc"] == 1.0 else 1 - p
        for p, r in zip(predictions, rows, strict=True)
    ]
    for name in names:
        out.metrics[name] = multiple_choice.f1(predictions, golds)


def perplexity(names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate) -> None:
    """Corpus-level perplexities (cpu_scorer.perplexity), with the totals behind them."""
    from cpu_scorer import perplexity as ppl

    out.metrics.update(ppl.aggregate([dict(r["metrics"]) for r in rows]))


def tinybenchmarks_irt(
    names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate
) -> None:
    if not options.irt_params:
        out.notes.append(
            "IRT, p-IRT and gp-IRT need tinyBenchmarks.pkl (pass --irt-params PATH); accuracy only"
        )
        return
    if len(rows) != 100:
        out.notes.append(f"IRT estimates need all 100 tinyMMLU items, have {len(rows)}")
        return
    from cpu_scorer import irt

    ordered = sorted(rows, key=lambda r: int(r["sample_id"]))
    correct = [dict(r["metrics"])["acc_norm"] for r in ordered]
    out.metrics.update(irt.estimate(irt.load_params(options.irt_params), correct))


def perplexity_of_mean(
    names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate
) -> None:
    """lm-eval's ``perplexity`` aggregation: exp(-mean(log-likelihood)) over samples."""
    values = [dict(r["metrics"])["logprob"] for r in rows]
    mean_logprob = sum(values) / len(values)
    for name in names:
        try:
            out.metrics[name] = math.exp(-mean_logprob)
        except OverflowError:
            out.metrics[name] = math.inf


def _pooled_stderr(groups: list[tuple[int, float]]) -> float | None:
    """lm-eval's pooled_sample_stderr over (size, stderr) pairs of subtasks."""
    total = sum(size for size, _ in groups)
    if total - len(groups) <= 0:
        return None
    variance = sum((size - 1) * stderr**2 * size for size, stderr in groups)
    return math.sqrt(variance / (total - len(groups)) / total)


def mmlu_groups(names: list[str], rows: Rows, options: AggregateOptions, out: Aggregate) -> None:
    """acc per subject and per category, and the overall stderr, as lm-eval's mmlu group
    aggregates its subtasks (weighted by size; stderr pooled over subjects)."""
    from shared.tasks.mmlu import CATEGORIES

    by_subject: dict[str, list[float]] = {}
    for r in rows:
        subject = r["sample_id"].split("/", 1)[0]
        by_subject.setdefault(subject, []).append(dict(r["metrics"])["acc"])
    subjects = {
        s: {"acc": _mean(v), "acc_stderr": _stderr(v) or 0.0, "n": len(v)}
        for s, v in sorted(by_subject.items())
    }
    categories: dict[str, dict[str, Any]] = {}
    for category in sorted(set(CATEGORIES.values())):
        members = [v for s, v in subjects.items() if CATEGORIES.get(s) == category]
        if not members:
            continue
        size = sum(m["n"] for m in members)
        categories[category] = {
            "acc": sum(m["acc"] * m["n"] for m in members) / size,
            "acc_stderr": _pooled_stderr([(m["n"], m["acc_stderr"]) for m in members]),
            "n": size,
        }
    out.metrics["by_subject"] = subjects
    out.metrics["by_category"] = categories
    # lm-eval's group stderr: pooled over the subjects (not the plain mean_stderr).
    out.metrics["acc_stderr"] = _pooled_stderr(
        [(m["n"], m["acc_stderr"]) for m in subjects.values()]
    )


Aggregation = Callable[[list[str], Rows, AggregateOptions, Aggregate], None]

AGGREGATIONS: dict[str, Aggregation] = {
    "mean": mean,
    "inst_mean": inst_mean,
    "by_instruction": by_instruction,
    "f1": f1,
    "perplexity": perplexity,
    "tinybenchmarks_irt": tinybenchmarks_irt,
    "perplexity_of_mean": perplexity_of_mean,
    "mmlu_groups": mmlu_groups,
}


def aggregate_task(
    task: TaskDef, rows: Rows, options: AggregateOptions | None = None
) -> tuple[Aggregate, int, int]:
    """(the task's numbers, samples scored, samples failed) from its score rows; rows
    with an error are counted, not aggregated."""
    options = options or AggregateOptions()
    ok = [r for r in rows if not r["error"]]
    out = Aggregate()
    if ok:
        groups: dict[str, list[str]] = {}
        for metric in task.metrics:
            groups.setdefault(metric.aggregation, []).append(metric.name)
        for aggregation, names in groups.items():
            AGGREGATIONS[aggregation](names, ok, options, out)
    return out, len(ok), len(rows) - len(ok)


def unknown_aggregations(metrics: tuple[Metric, ...]) -> list[str]:
    """Aggregation names a task declares that this scorer does not have."""
    return sorted({m.aggregation for m in metrics} - set(AGGREGATIONS))
