"""acc and acc_norm from per-choice log-probabilities, as lm-evaluation-harness defines them.

acc picks the choice with the highest summed log-probability. acc_norm divides each
log-probability by the choice's length in *characters* (Python ``len``, without the
leading space of the continuation), which removes the bias towards short answers. Ties
go to the first index, like ``np.argmax``. Stdlib only: this runs once per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from shared.errors import TandemError


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (np.argmax's rule)."""
    if not values:
        raise TandemError("argmax of an empty list: a multiple-choice row has no choices")
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def score_row(logprobs: list[float], choice_texts: list[str], gold: int | None) -> dict:
    """Per-sample metrics and the predicted index for one multiple-choice row.

    ``logprobs[i]`` is log P(choice i | context); ``choice_texts[i]`` is choice i without
    the target delimiter. Without a gold answer the metrics are empty (prediction only).
    A NaN log-probability is refused: it would make argmax depend on its position.
    """
    if len(logprobs) != len(choice_texts):
        raise TandemError(
            f"{len(logprobs)} log-probs for {len(choice_texts)} choice texts; "
            "they must pair one to one"
        )
    if any(math.isnan(value) for value in logprobs):
        raise TandemError(f"NaN log-probability among {logprobs}")
    prediction = argmax(logprobs)
    # lm-eval divides by len(choice); an empty choice would divide by zero, so it is
    # scored as length 1 (its raw log-prob) instead of crashing the whole shard.
    normalized = [lp / max(len(text), 1) for lp, text in zip(logprobs, choice_texts, strict=True)]
    prediction_norm = argmax(normalized)
    metrics: dict[str, float] = {}
    if gold is not None:
        if not 0 <= gold < len(logprobs):
            raise TandemError(f"gold index {gold} out of range for {len(logprobs)} choices")
        metrics = {
            "acc": float(prediction == gold),
            "acc_norm": float(prediction_norm == gold),
        }
    return {"metrics": metrics, "prediction": prediction, "prediction_norm": prediction_norm}


def mean_stderr(values: Sequence[float]) -> float:
    """Sample standard deviation / sqrt(n), lm-eval's ``mean_stderr`` (0 for n < 2)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    variance = sum((value - mean) ** 2 for value in values) / (n - 1)
    return math.sqrt(variance / n)


def aggregate(metric_rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the rows that have it, plus ``<metric>_stderr``."""
    columns: dict[str, list[float]] = {}
    for row in metric_rows:
        for name, value in row.items():
            columns.setdefault(name, []).append(float(value))
    summary: dict[str, float] = {}
    for name in sorted(columns):
        values = columns[name]
        summary[name] = sum(values) / len(values)
        summary[f"{name}_stderr"] = mean_stderr(values)
    return summary


def f1(predictions: Sequence[int], golds: Sequence[int]) -> float:
    """Binary F1 with class 1 positive (sklearn's ``f1_score`` default; lm-eval's MRPC f1).

    Like sklearn, 0.0 when there is no true positive, predicted or gold.
    """
    if len(predictions) != len(golds):
        raise TandemError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    pairs = list(zip(predictions, golds, strict=True))
    true_pos = sum(1 for p, g in pairs if p == 1 and g == 1)
    false_pos = sum(1 for p, g in pairs if p == 1 and g != 1)
    false_neg = sum(1 for p, g in pairs if p != 1 and g == 1)
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0
