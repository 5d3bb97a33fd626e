"""Scorers of generative tasks: GSM8K and MATH (answer extraction and matching,
``cpu_scorer.answers``) and code (programs run in ``cpu_scorer.sandbox``).

Each score row keeps, in ``details`` (JSON), what was compared: the extracted answers
and the target, or the program's outcome (passed, failed, timeout, error, with its
message), so a reader sees why a sample passed or failed.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from cpu_scorer import answers
from cpu_scorer._rows import DEFAULT_OPTIONS, Rows, ScoreOptions, load_doc, score_row_base


@functools.lru_cache(maxsize=1)
def _isolation() -> Any:
    """How programs are contained here, found once per process (and logged)."""
    from cpu_scorer import sandbox

    return sandbox.detect_isolation()


def _details(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def score_gsm8k(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    """lm-eval's two filters, each scored by exact match against the reference."""
    out = []
    for row in rows:
        scored = score_row_base(row)
        if not row.get("error"):
            reference = load_doc(row)["answer"]
            response = row["response"] or ""
            strict = answers.gsm8k_strict(response)
            flexible = answers.gsm8k_flexible(response)
            scored["metrics"] = [
                ("exact_match,flexible-extract", float(answers.gsm8k_match(flexible, reference))),
                ("exact_match,strict-match", float(answers.gsm8k_match(strict, reference))),
            ]
            scored["details"] = _details(
                {
                    "strict-match": strict,
                    "flexible-extract": flexible,
                    "target": answers.gsm8k_normalize(reference),
                }
            )
        out.append(scored)
    return out


def score_math(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    """Minerva's answer format, normalization and (sympy) equivalence."""
    out = []
    for row in rows:
        scored = score_row_base(row)
        if not row.get("error"):
            target = answers.math_target(load_doc(row)["solution"])
            extracted = answers.normalize_math(answers.math_extract(row["response"] or ""))
            scored["metrics"] = [("exact_match", float(answers.math_equivalent(extracted, target)))]
            scored["details"] = _details({"extracted": extracted, "target": target})
        out.append(scored)
    return out


def score_code(rows: Rows, options: ScoreOptions = DEFAULT_OPTIONS) -> Rows:
    """Each program -- the doc's prefix (HumanEval's prompt), the completion and the
    task's tests -- runs in the sandbox; pass@1 of one greedy sample is 1 or 0."""
    from cpu_scorer import sandbox

    sandbox.require_confirmation(options.confirm_unsafe_code, rows[0]["task"] if rows else "")
    out = [score_row_base(row) for row in rows]
    todo = [i for i, row in enumerate(rows) if not row.get("error")]
    programs = []
    for i in todo:
        doc = load_doc(rows[i])
        programs.append(
            doc.get("program_prefix", "") + (rows[i]["response"] or "") + "\n" + doc["tests"]
        )
    outcomes = sandbox.run_many(
        programs, sandbox.Limits(), workers=options.code_workers, isolation=_isolation()
    )
    for i, outcome in zip(todo, outcomes, strict=True):
        out[i]["metrics"] = [("pass@1", float(outcome.status == "passed"))]
        # No timing here: a score shard is a pure function of its generation shard.
        out[i]["details"] = _details({"status": outcome.status, "message": outcome.message})
    return out
