"""Perplexity aggregation against a direct computation by hand."""

from __future__ import annotations

import math

import pytest

from cpu_scorer.perplexity import aggregate, per_sample
from shared.errors import TandemError


def test_corpus_metrics_weight_by_size():
    rows = [
        {"logprob": -10.0, "tokens": 5, "words": 4, "bytes": 20},
        {"logprob": -30.0, "tokens": 15, "words": 6, "bytes": 40},
    ]
    summary = aggregate(rows)
    # Total -40 over 20 tokens, 10 words, 60 bytes.
    assert summary["token_perplexity"] == pytest.approx(math.exp(2.0))
    assert summary["word_perplexity"] == pytest.approx(math.exp(4.0))
    assert summary["byte_perplexity"] == pytest.approx(math.exp(40 / 60))
    assert summary["bits_per_byte"] == pytest.approx(40 / 60 / math.log(2))
    assert summary["samples"] == 2
    # Not the mean of per-text perplexities: exp(2) and exp(2) average to exp(2) for
    # tokens here, but words give exp(2.5) and exp(5) -> mean != exp(4).
    per_text = [math.exp(10 / 4), math.exp(30 / 6)]
    assert summary["word_perplexity"] != pytest.approx(sum(per_text) / 2)


def test_rows_with_errors_are_left_out():
    rows = [
        {"logprob": -4.0, "tokens": 2, "words": 2, "bytes": 8},
        {"logprob": 0.0, "tokens": 0, "words": 0, "bytes": 0, "error": "empty text"},
    ]
    assert aggregate(rows)["token_perplexity"] == pytest.approx(math.exp(2.0))


def test_missing_column_and_no_rows():
    with pytest.raises(TandemError, match=r"missing \['words'\]"):
        aggregate([{"logprob": -1.0, "tokens": 1, "bytes": 1}])
    with pytest.raises(TandemError, match="nothing to compute"):
        aggregate([])


def test_huge_perplexity_is_inf_not_a_crash():
    summary = aggregate([{"logprob": -1e6, "tokens": 1, "words": 1, "bytes": 1}])
    assert summary["token_perplexity"] == math.inf


def test_per_sample_metrics():
    metrics = per_sample({"logprob": -6.0, "tokens": 3, "words": 2, "bytes": 12})
    assert metrics["token_perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics["bits_per_byte"] == pytest.approx(0.5 / math.log(2))
