"""Perplexity metrics from ROLLING rows, with lm-evaluation-harness's definitions.

Each row holds the summed natural-log probability of a whole text (``logprob``) and its
``tokens``, ``words`` and ``bytes`` counts. The corpus-level metrics weight every text
by its size -- total log-prob over total units, not a mean of per-text perplexities:

* word_perplexity  = exp(-sum(logprob) / sum(words))
* byte_perplexity  = exp(-sum(logprob) / sum(bytes))
* bits_per_byte    = -sum(logprob) / sum(bytes) / ln 2
* token_perplexity = exp(-sum(logprob) / sum(tokens))   (depends on the tokenizer)

Words and bytes make models with different tokenizers comparable; tokens do not.
Stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import TandemError

_FIELDS = ("logprob", "tokens", "words", "bytes")


def _exp(value: float) -> float:
    # An untrained model can exceed float range; report inf rather than crash.
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def per_sample(row: Mapping[str, Any]) -> dict[str, float]:
    """One text's own metrics, for the score row (the summary re-weights by size)."""
    logprob = float(row["logprob"])
    metrics = {"logprob": logprob}
    for unit in ("tokens", "words", "bytes"):
        count = row.get(unit)
        if count:
            metrics[unit] = float(count)
    if row.get("tokens"):
        metrics["token_perplexity"] = _exp(-logprob / row["tokens"])
    if row.get("bytes"):
        metrics["bits_per_byte"] = -logprob / row["bytes"] / math.log(2)
    return metrics


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Corpus-level perplexities over the rows without an error.

    Raises TandemError when a needed column is missing or no row is usable.
    """
    totals = dict.fromkeys(_FIELDS, 0.0)
    count = 0
    for index, row in enumerate(rows):
        if row.get("error"):
            continue
        missing = [name for name in _FIELDS if row.get(name) is None]
        if missing:
            raise TandemError(f"rolling row {index}: missing {missing}; cannot score perplexity")
        for name in _FIELDS:
            totals[name] += float(row[name])
        count += 1
    if count == 0:
        raise TandemError("no rolling row without an error: nothing to compute perplexity from")
    nll = -totals["logprob"]
    summary: dict[str, float] = {"samples": float(count), "logprob": totals["logprob"]}
    for unit, key in (("words", "word_perplexity"), ("tokens", "token_perplexity")):
        if totals[unit] > 0:
            summary[key] = _exp(nll / totals[unit])
    if totals["bytes"] > 0:
        summary["byte_perplexity"] = _exp(nll / totals["bytes"])
        summary["bits_per_byte"] = nll / totals["bytes"] / math.log(2)
    return summary
