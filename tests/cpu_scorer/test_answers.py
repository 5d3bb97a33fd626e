"""Answer extraction and metrics of the generative and TruthfulQA tasks equal
lm-evaluation-harness 0.4.13's on the fixture cases (made by bench/lmeval_fixtures.py
with lm-eval's own filters and functions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cpu_scorer import answers
from cpu_scorer.scorers import score_mc2

CASES = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "lmeval" / "metrics.json").read_text()
)


@pytest.mark.parametrize("case", CASES["gsm8k"], ids=lambda c: c["response"][:30])
def test_gsm8k_extraction_and_exact_match(case: dict) -> None:
    assert answers.gsm8k_strict(case["response"]) == case["strict"]
    assert answers.gsm8k_flexible(case["response"]) == case["flexible"]
    assert float(answers.gsm8k_match(case["strict"], case["reference"])) == case["strict_match"]
    assert float(answers.gsm8k_match(case["flexible"], case["reference"])) == case["flexible_match"]


@pytest.mark.parametrize("raw", sorted(CASES["math_normalize"]))
def test_math_normalization(raw: str) -> None:
    assert answers.normalize_math(raw) == CASES["math_normalize"][raw]


@pytest.mark.parametrize("case", CASES["math_equivalent"], ids=lambda c: f"{c['a']}~{c['b']}")
def test_math_equivalence(case: dict) -> None:
    a, b = answers.normalize_math(case["a"]), answers.normalize_math(case["b"])
    assert (a, b) == (case["normalized_a"], case["normalized_b"])
    assert answers.math_equivalent(a, b) is case["equiv"]


@pytest.mark.parametrize("case", CASES["math_results"], ids=lambda c: c["solution"][:25])
def test_math_target_extraction_and_score(case: dict) -> None:
    assert answers.math_target(case["solution"]) == case["target"]
    extracted = answers.normalize_math(answers.math_extract(case["response"]))
    assert extracted == case["extracted"]
    assert float(answers.math_equivalent(extracted, case["target"])) == case["exact_match"]


def test_the_classic_pairs() -> None:
    """\\frac12 is 0.5 and 1/2; a tuple equals itself though sympy cannot parse it."""
    assert answers.math_equivalent(answers.normalize_math("\\frac12"), "0.5")
    assert answers.math_equivalent("(2,5)", "(2,5)")
    assert not answers.math_equivalent("3", "4")


@pytest.mark.parametrize("case", CASES["truthfulqa_mc2"], ids=str)
def test_truthfulqa_mc2(case: dict) -> None:
    row = {
        "run_id": "r",
        "task": "truthfulqa_mc2",
        "sample_id": "0",
        "error": None,
        "logprobs": case["loglikelihoods"],
        "doc": json.dumps({"labels": case["labels"]}),
    }
    (scored,) = score_mc2([row])
    assert math.isclose(dict(scored["metrics"])["acc"], case["acc"], rel_tol=1e-12, abs_tol=1e-15)
