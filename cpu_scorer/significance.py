"""Is run B better than run A, or is it noise? Paired tests over the same samples.

Two runs of one task answer the same samples, so the question is about the per-sample
differences ``d_i = b_i - a_i``, not about two independent means: pairing removes the
spread between easy and hard samples, which dominates the stderr of either run alone
(IFEval's prompt-level stderr at 541 prompts is about 2 points; a paired interval on two
checkpoints of one model is often half that).

- ``paired_bootstrap``: the mean difference with a percentile interval from resampling
  the samples (with replacement) ``resamples`` times. Seeded: the same inputs give the
  same interval on every machine and every run.
- ``mcnemar_exact``: for pass/fail metrics, the exact two-sided binomial test on the
  discordant pairs (samples that passed in exactly one run): under "no difference" a
  discordant sample is as likely to be fixed as broken, so the fixed count is
  Binomial(fixed + broken, 1/2). Exact, not the chi-square approximation, because the
  discordant counts between two similar runs are small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
# Resample by counts of each distinct difference (a multinomial draw) when there are at
# most this many: pass/fail differences take three values (-1, 0, 1), so an interval
# over 14,000 MMLU questions costs 10,000 draws of 3 counts, not 140 million indices.
_FEW_VALUES = 64
# Index resampling otherwise, this many sample draws per chunk (bounded memory).
_CHUNK_DRAWS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """The mean of ``b - a`` and its bootstrap interval."""

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Mean of ``b[i] - a[i]`` with a percentile bootstrap interval.

    ``a`` and ``b`` are per-sample values of the same samples in the same order (the
    caller sorts them by sample id, so the result does not depend on shard order).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("no samples to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(d)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if len(values) <= _FEW_VALUES:
        draws = rng.multinomial(n, counts / n, size=resamples)
        means = draws @ values / n
    else:
        per_chunk = max(1, _CHUNK_DRAWS // n)
        parts = []
        for start in range(0, resamples, per_chunk):
            size = min(per_chunk, resamples - start)
            parts.append(d[rng.integers(0, n, size=(size, n))].mean(axis=1))
        means = np.concatenate(parts)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(d.mean()), float(low), float(high), confidence, resamples, seed)


def mcnemar_exact(broken: int, fixed: int) -> float:
    """Two-sided exact p-value that ``fixed`` (A fails, B passes) and ``broken`` (A
    passes, B fails) come from a fair coin: 2 * P(X <= min) for X ~ Binomial(n, 1/2),
    capped at 1 (the distribution is symmetric, so this is the usual two-sided test)."""
    if broken < 0 or fixed < 0:
        raise ValueError(f"counts must be non-negative, got {broken} and {fixed}")
    n = broken + fixed
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(broken, fixed) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))
