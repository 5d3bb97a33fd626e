"""Which prompts flipped between two runs: ``tandem compare A B`` and ``GET /compare``.

A sample passes when every IFEval instruction passes (strict), or when a
multiple-choice answer is right (acc). A flip is a sample that passes in one run and
fails in the other: "fixed" (fails in A, passes in B) or "broken" (passes in A, fails in
B). Samples are matched by sample_id; those scored in only one run are counted, not
compared. Both the CLI and the API print this function's result, so they agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import pyarrow as pa

from cpu_scorer._queries import SampleCache, require_run
from shared.store import Store, check_run_id, check_task

_CACHE = SampleCache(capacity=4)


def _verdicts(table: pa.Table) -> dict[str, dict[str, Any]]:
    out = {}
    columns = ["sample_id", "passed", "prompt", "instruction_id_list", "inst_level_strict"]
    present = [c for c in columns if c in table.column_names]
    for row in table.select(present).to_pylist():
        if row.get("passed") is not None:
            out[row["sample_id"]] = row
    return out


def compare_runs(
    store: Store, a: str, b: str, task: str, cache: SampleCache | None = None
) -> dict[str, Any]:
    """Per-prompt flips of ``task`` between runs ``a`` and ``b``, with counts each way."""
    check_run_id(a)
    check_run_id(b)
    check_task(task)
    cache = cache or _CACHE
    for run_id in (a, b):
        require_run(store, run_id)
    table_a = cache.samples(store, a, task)
    table_b = cache.samples(store, b, task)
    metric = "prompt_level_strict_acc" if _is_ifeval(table_a) else "acc"
    left, right = _verdicts(table_a), _verdicts(table_b)
    counts = {
        "fixed": 0,
        "broken": 0,
        "both_pass": 0,
        "both_fail": 0,
        "only_in_a": 0,
        "only_in_b": 0,
    }
    flips = []
    for sample_id, row_a in left.items():
        row_b = right.get(sample_id)
        if row_b is None:
            counts["only_in_a"] += 1
            continue
        pass_a, pass_b = row_a["passed"], row_b["passed"]
        if pass_a == pass_b:
            counts["both_pass" if pass_a else "both_fail"] += 1
            continue
        direction = "fixed" if pass_b else "broken"
        counts[direction] += 1
        flips.append(
            {
                "sample_id": sample_id,
                "direction": direction,
                "a": pass_a,
                "b": pass_b,
                "prompt": row_a.get("prompt"),
                "instructions_changed": _changed(row_a, row_b),
            }
        )
    counts["only_in_b"] = sum(1 for s in right if s not in left)
    return {"a": a, "b": b, "task": task, "metric": metric, "counts": counts, "flips": flips}


def _is_ifeval(table: pa.Table) -> bool:
    ids = table.column("instruction_id_list")
    return ids.null_count < len(ids)


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


def run(args: argparse.Namespace) -> int:
    """``tandem compare A B``: the same flips as ``GET /compare?a=A&b=B&task=``."""
    result = compare_runs(Store(args.store), args.a, args.b, args.task)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        print_comparison(result)
    return 0
