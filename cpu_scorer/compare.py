"""Which prompts flipped between two runs: ``tandem compare A B`` and ``GET /compare``.

A sample passes when every IFEval instruction passes (strict), or when a
multiple-choice answer is right (acc). A flip is a sample that passes in one run and
fails in the other: "fixed" (fails in A, passes in B) or "broken" (passes in A, fails in
B). Samples are matched by sample_id; those scored in only one run are counted, not
compared. Both the CLI and the API print this function's result, so they agree.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from cpu_scorer._queries import SampleCache, TaskIndex, pass_metric, require_run
from shared.store import GENERATIONS, SCORES, Store, TaskState, check_run_id, check_task

_CACHE = SampleCache(capacity=4)


def _verdicts(index: TaskIndex) -> dict[str, tuple[int, bool]]:
    """sample id -> (position in the index, passed) for the samples with a verdict."""
    return {
        sample_id: (position, passed)
        for position, (sample_id, passed) in enumerate(
            zip(index.sample_id.to_pylist(), index.passed.to_pylist(), strict=True)
        )
        if passed is not None
    }


def compare_runs(
    store: Store, a: str, b: str, task: str, cache: SampleCache | None = None
) -> dict[str, Any]:
    """Per-prompt flips of ``task`` between runs ``a`` and ``b``, with counts each way.

    Built from the two task indexes (sample ids and verdicts, cached); only the flipped
    samples' prompt and instruction verdicts are read, so a compare of runs with
    thousands of shards costs what their indexes cost, once.
    """
    check_run_id(a)
    check_run_id(b)
    check_task(task)
    cache = cache or _CACHE
    for run_id in (a, b):
        require_run(store, run_id)
    state_a, index_a = cache.index(store, a, task)
    state_b, index_b = cache.index(store, b, task)
    left, right = _verdicts(index_a), _verdicts(index_b)
    counts = {
        "fixed": 0,
        "broken": 0,
        "both_pass": 0,
        "both_fail": 0,
        "only_in_a": 0,
        "only_in_b": 0,
    }
    flipped: list[tuple[str, int, int, bool, bool]] = []
    for sample_id, (pos_a, pass_a) in left.items():
        hit = right.get(sample_id)
        if hit is None:
            counts["only_in_a"] += 1
            continue
        pos_b, pass_b = hit
        if pass_a == pass_b:
            counts["both_pass" if pass_a else "both_fail"] += 1
            continue
        counts["fixed" if pass_b else "broken"] += 1
        flipped.append((sample_id, pos_a, pos_b, pass_a, pass_b))
    counts["only_in_b"] = sum(1 for s in right if s not in left)
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
        "metric": pass_metric(task),
        "counts": counts,
        "flips": flips,
    }


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


def print_comparison(result: dict[str, Any], out: TextIO = sys.stdout, width: int = 72) -> None:
    counts = result["counts"]
    lines = [
        f"{result['a']} -> {result['b']}  task {result['task']} ({result['metric']}): "
        f"{counts['fixed']} fixed, {counts['broken']} broken, "
        f"{counts['both_pass']} both pass, {counts['both_fail']} both fail"
        + (f", {counts['only_in_a']} only in A" if counts["only_in_a"] else "")
        + (f", {counts['only_in_b']} only in B" if counts["only_in_b"] else "")
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


def main(store_uri: str, a: str, b: str, task: str, as_json: bool = False) -> int:
    """``tandem compare A B``: the same flips as ``GET /compare?a=A&b=B&task=``."""
    store = Store(store_uri)
    store.check(writable=False)
    result = compare_runs(store, a, b, task)
    if as_json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        print_comparison(result)
    return 0
