"""Two runs of one task: which prompts flipped, and is the difference more than noise.

``tandem compare A B`` and ``GET /compare`` print this module's results, so they agree.

A sample passes when every IFEval instruction passes (strict), or when a
multiple-choice answer is right (acc): its task scorer's pass metric is 1. A flip is a
sample that passes in one run and fails in the other: "fixed" (fails in A, passes in B)
or "broken" (passes in A, fails in B). Samples are matched by sample_id.

Each comparison carries a paired test (``cpu_scorer.significance``): the difference in
pass rate with a 95% paired-bootstrap interval and McNemar's exact test on the flips.
A test over different samples would compare different questions, so two runs that do
not cover the same samples of a task (one still running, a different ``limit``) are
refused with the ids that differ.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from cpu_scorer import significance
from cpu_scorer._queries import RunNotFound, SampleCache, TaskIndex, pass_metric, require_run
from shared.errors import TandemError
from shared.store import GENERATIONS, SCORES, Store, TaskState, check_run_id, check_task

_CACHE = SampleCache(capacity=4)
# How many differing sample ids a refusal names (the counts are always given).
_IDS_SHOWN = 10


class NotPaired(TandemError):
    """Two runs do not cover the same samples of a task (the API answers 409)."""


def _verdicts(index: TaskIndex) -> dict[str, tuple[int, bool]]:
    """sample id -> (position in the index, passed) for the samples with a verdict."""
    return {
        sample_id: (position, passed)
        for position, (sample_id, passed) in enumerate(
            zip(index.sample_id.to_pylist(), index.passed.to_pylist(), strict=True)
        )
        if passed is not None
    }


def _named(ids: set[str]) -> str:
    shown = sorted(ids)[:_IDS_SHOWN]
    more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
    return ", ".join(shown) + more


def _check_paired(a: str, b: str, task: str, left: dict[str, Any], right: dict[str, Any]) -> None:
    only_a, only_b = set(left) - set(right), set(right) - set(left)
    if not only_a and not only_b:
        return
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} scored only in {a} ({_named(only_a)})")
    if only_b:
        parts.append(f"{len(only_b)} scored only in {b} ({_named(only_b)})")
    raise NotPaired(
        f"runs {a!r} and {b!r} do not cover the same samples of task {task!r}: "
        + "; ".join(parts)
        + ". A paired comparison needs both runs scored on the same samples: wait for "
        "the scorer, or compare runs with the same limit"
    )


def paired_test(
    left: dict[str, tuple[int, bool]], right: dict[str, tuple[int, bool]], metric: str | None
) -> dict[str, Any]:
    """The paired test of verdicts over the same samples (checked by the caller)."""
    ids = sorted(left)  # sample order fixed by id: the interval is the same every time
    a = [float(left[s][1]) for s in ids]
    b = [float(right[s][1]) for s in ids]
    interval = significance.paired_bootstrap(a, b)
    fixed = sum(1 for x, y in zip(a, b, strict=True) if y > x)
    broken = sum(1 for x, y in zip(a, b, strict=True) if y < x)
    return {
        "metric": metric,
        "n": len(ids),
        "a": sum(a) / len(a),
        "b": sum(b) / len(b),
        "difference": interval.difference,
        "ci": [interval.low, interval.high],
        "confidence": interval.confidence,
        "bootstrap": {"resamples": interval.resamples, "seed": interval.seed},
        "mcnemar": {
            "fixed": fixed,
            "broken": broken,
            "p_value": significance.mcnemar_exact(broken, fixed),
        },
    }


def _indexes(
    store: Store, a: str, b: str, task: str, cache: SampleCache
) -> tuple[tuple[TaskState, TaskIndex], tuple[TaskState, TaskIndex]]:
    check_run_id(a)
    check_run_id(b)
    check_task(task)
    for run_id in (a, b):
        require_run(store, run_id)
    return cache.index(store, a, task), cache.index(store, b, task)


def compare_runs(
    store: Store, a: str, b: str, task: str, cache: SampleCache | None = None
) -> dict[str, Any]:
    """Per-prompt flips of ``task`` between runs ``a`` and ``b``, counts each way and the
    paired test. NotPaired when the runs do not cover the same samples.

    Built from the two task indexes (sample ids and verdicts, cached); only the flipped
    samples' prompt and instruction verdicts are read, so a compare of runs with
    thousands of shards costs what their indexes cost, once.
    """
    cache = cache or _CACHE
    (state_a, index_a), (state_b, index_b) = _indexes(store, a, b, task, cache)
    left, right = _verdicts(index_a), _verdicts(index_b)
    metric = pass_metric(task)
    if metric is not None:
        _check_paired(a, b, task, left, right)
    counts = {"fixed": 0, "broken": 0, "both_pass": 0, "both_fail": 0}
    flipped: list[tuple[str, int, int, bool, bool]] = []
    for sample_id, (pos_a, pass_a) in left.items():
        pos_b, pass_b = right[sample_id]
        if pass_a == pass_b:
            counts["both_pass" if pass_a else "both_fail"] += 1
            continue
        counts["fixed" if pass_b else "broken"] += 1
        flipped.append((sample_id, pos_a, pos_b, pass_a, pass_b))
    details_a = _details(cache, store, state_a, index_a, [f[1] for f in flipped])
    details_b = _details(cache, store, state_b, index_b, [f[2] for f in flipped])
    flips = [
        {
            "sample_id": sample_id,
            "direction": "fixed" if pass_b else "broken",
            "a": pass_a,
            "b": pass_b,
            "prompt": row_a.get("prompt"),
            "instructions_changed": _changed(row_a, row_b),
        }
        for (sample_id, _, _, pass_a, pass_b), row_a, row_b in zip(
            flipped, details_a, details_b, strict=True
        )
    ]
    return {
        "a": a,
        "b": b,
        "task": task,
        "metric": metric,
        "counts": counts,
        "flips": flips,
        "test": paired_test(left, right, metric) if metric and left else None,
    }


def tasks_in_both(store: Store, a: str, b: str) -> list[str]:
    """The tasks both runs planned or generated, sorted."""
    tasks = []
    for run_id in (a, b):
        record = require_run(store, run_id)
        tasks.append(set(record.tasks) | set(store.list_tasks(run_id, GENERATIONS)))
    return sorted(tasks[0] & tasks[1])


def paired_tests(store: Store, a: str, b: str, cache: SampleCache | None = None) -> dict[str, Any]:
    """The paired test of every task both runs have: per task, the test, or ``error``
    saying why there is none (samples that differ, no pass/fail metric, no shards)."""
    cache = cache or _CACHE
    check_run_id(a)
    check_run_id(b)
    out: dict[str, Any] = {}
    for task in tasks_in_both(store, a, b):
        metric = pass_metric(task)
        if metric is None:
            out[task] = {"metric": None, "error": f"task {task!r} has no pass/fail metric"}
            continue
        try:
            (_, index_a), (_, index_b) = _indexes(store, a, b, task, cache)
            left, right = _verdicts(index_a), _verdicts(index_b)
            _check_paired(a, b, task, left, right)
        except (NotPaired, RunNotFound) as error:
            out[task] = {"metric": metric, "error": str(error)}
            continue
        if not left:
            out[task] = {"metric": metric, "error": "no scored samples yet"}
            continue
        out[task] = paired_test(left, right, metric)
    return {"a": a, "b": b, "tasks": out}


def _details(
    cache: SampleCache, store: Store, state: TaskState, index: TaskIndex, positions: list[int]
) -> list[dict[str, Any]]:
    """Prompt and per-instruction strict verdicts of the samples at ``positions``: the
    few columns needed, read (and cached) once per shard."""
    shards = index.shard.to_pylist()
    rows = index.row.to_pylist()
    columns: dict[int, dict[str, list[Any]]] = {}
    out = []
    for position in positions:
        number, row = shards[position], rows[position]
        if number not in columns:
            ref = index.refs[number]
            columns[number] = cache.column_lists(store, state, ref, GENERATIONS, ("prompt",))
            if index.scored[number]:
                columns[number].update(
                    cache.column_lists(
                        store, state, ref, SCORES, ("instruction_id_list", "inst_level_strict")
                    )
                )
        shard = columns[number]
        out.append({name: values[row] for name, values in shard.items()})
    return out


def _changed(row_a: dict[str, Any], row_b: dict[str, Any]) -> list[dict[str, Any]] | None:
    """IFEval: the instructions whose strict verdict differs between the two runs."""
    ids = row_a.get("instruction_id_list")
    if not ids or row_a.get("inst_level_strict") is None or row_b.get("inst_level_strict") is None:
        return None
    return [
        {"id": name, "a": va, "b": vb}
        for name, va, vb in zip(
            ids, row_a["inst_level_strict"], row_b["inst_level_strict"], strict=False
        )
        if va != vb
    ]


def test_line(task: str, test: dict[str, Any]) -> str:
    """One line of a paired test: difference, interval, McNemar's p."""
    if test.get("error"):
        return f"{task}: no paired test: {test['error']}"
    low, high = test["ci"]
    mcnemar = test["mcnemar"]
    return (
        f"{task} {test['metric']}: {test['a']:.4f} -> {test['b']:.4f}, difference "
        f"{test['difference']:+.4f} (95% CI {low:+.4f} .. {high:+.4f}, n={test['n']}); "
        f"McNemar exact p={mcnemar['p_value']:.4g} ({mcnemar['fixed']} fixed, "
        f"{mcnemar['broken']} broken)"
    )


def print_comparison(result: dict[str, Any], out: TextIO = sys.stdout, width: int = 72) -> None:
    counts = result["counts"]
    lines = [
        f"{result['a']} -> {result['b']}  task {result['task']} ({result['metric']}): "
        f"{counts['fixed']} fixed, {counts['broken']} broken, "
        f"{counts['both_pass']} both pass, {counts['both_fail']} both fail"
    ]
    for flip in result["flips"]:
        prompt = " ".join((flip["prompt"] or "").split())
        if len(prompt) > width:
            prompt = prompt[: width - 1] + "…"
        lines.append(f"  {flip['direction']:<7} {flip['sample_id']:<10} {prompt}")
        for change in flip["instructions_changed"] or []:
            verdict = "pass -> fail" if change["a"] else "fail -> pass"
            lines.append(f"  {'':<7} {'':<10}   {change['id']}: {verdict}")
    print("\n".join(lines), file=out)


def print_tests(result: dict[str, Any], out: TextIO = sys.stdout) -> None:
    lines = [f"paired tests, {result['a']} -> {result['b']}:"]
    lines += ["  " + test_line(task, test) for task, test in result["tasks"].items()]
    print("\n".join(lines), file=out)


def main(store_uri: str, a: str, b: str, task: str | None, as_json: bool = False) -> int:
    """``tandem compare A B``: the flips of one task (``task``; by default ifeval when
    both runs have it, else their first common task) exactly as ``GET /compare`` gives
    them, then the paired test of every task the two runs share."""
    store = Store(store_uri)
    store.check(writable=False)
    if task is None:
        shared = tasks_in_both(store, check_run_id(a), check_run_id(b))
        if not shared:
            raise TandemError(f"runs {a!r} and {b!r} have no task in common")
        task = "ifeval" if "ifeval" in shared else shared[0]
    result = compare_runs(store, a, b, task)
    if as_json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
        return 0
    print_comparison(result)
    print_tests(paired_tests(store, a, b))
    return 0
