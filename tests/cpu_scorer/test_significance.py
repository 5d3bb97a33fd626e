"""Paired significance: the bootstrap interval and McNemar's exact test, by hand and
against scipy, and through compare (CLI and API), which refuses unpaired runs."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, generate, tandem
from fastapi.testclient import TestClient
from scipy.stats import binomtest

from cpu_scorer.api import create_app
from cpu_scorer.compare import NotPaired, compare_runs, paired_tests
from cpu_scorer.scoring import score_store
from cpu_scorer.significance import mcnemar_exact, paired_bootstrap
from shared.store import Store


# ---- McNemar ---------------------------------------------------------------------------
def test_mcnemar_by_hand() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    # 5 fixed, 0 broken: 2 * (1/2)^5
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    # 1 vs 4: 2 * (C(5,0) + C(5,1)) / 32 = 12/32
    assert mcnemar_exact(1, 4) == pytest.approx(12 / 32)
    # 0 vs 1: the only outcome other than itself is as likely: p capped at 1
    assert mcnemar_exact(0, 1) == 1.0


@pytest.mark.parametrize(
    "broken,fixed",
    [(b, f) for b in range(0, 13) for f in range(0, 13)] + [(40, 61), (500, 430), (3, 97)],
)
def test_mcnemar_equals_scipys_exact_binomial(broken: int, fixed: int) -> None:
    n = broken + fixed
    expected = 1.0 if n == 0 else binomtest(fixed, n, 0.5).pvalue
    assert mcnemar_exact(broken, fixed) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# ---- the bootstrap ---------------------------------------------------------------------
def test_bootstrap_of_a_constant_difference_is_that_constant() -> None:
    interval = paired_bootstrap([0, 1, 0, 1], [1, 2, 1, 2])
    assert (interval.difference, interval.low, interval.high) == (1.0, 1.0, 1.0)
    same = paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)


def test_bootstrap_of_two_samples_by_hand() -> None:
    # d = (1, 0): a resample's mean is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% points are 0 and 1.
    interval = paired_bootstrap([0, 0], [1, 0])
    assert interval.difference == 0.5
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_bootstrap_matches_the_normal_interval_on_many_samples() -> None:
    # 1000 pairs: 300 fixed, 100 broken, 600 tied. d has mean 0.2 and variance
    # E[d^2] - 0.2^2 = 0.4 - 0.04 = 0.36: the interval is about 0.2 +- 1.96 * 0.6 / sqrt(1000).
    a = [0] * 300 + [1] * 100 + [1] * 300 + [0] * 300
    b = [1] * 300 + [0] * 100 + [1] * 300 + [0] * 300
    interval = paired_bootstrap(a, b)
    half = 1.96 * 0.6 / math.sqrt(1000)
    assert interval.difference == pytest.approx(0.2)
    assert interval.low == pytest.approx(0.2 - half, abs=0.005)
    assert interval.high == pytest.approx(0.2 + half, abs=0.005)


def test_bootstrap_is_seeded_and_deterministic() -> None:
    a = [i % 3 / 2 for i in range(200)]
    b = [(i * 7) % 5 / 4 for i in range(200)]
    first, again = paired_bootstrap(a, b), paired_bootstrap(a, b)
    assert first == again
    assert paired_bootstrap(a, b, seed=1) != first
    # Many distinct differences take the index-resampling path: deterministic too.
    c = [i / 1000 for i in range(300)]
    d = [(i * 13 % 300) / 1000 for i in range(300)]
    assert paired_bootstrap(c, d) == paired_bootstrap(c, d)
    wide = paired_bootstrap(c, d)
    assert wide.low < wide.difference < wide.high


def test_bootstrap_refuses_unpaired_input() -> None:
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="no samples"):
        paired_bootstrap([], [])


# ---- through compare -------------------------------------------------------------------
def test_compare_carries_the_paired_test(scored_store: Path) -> None:
    store = Store(str(scored_store))
    result = compare_runs(store, "run-a", "run-b", "ifeval")
    test = result["test"]
    counts = result["counts"]
    assert test["n"] == 40 and test["metric"] == "prompt_level_strict_acc"
    assert test["mcnemar"]["fixed"] == counts["fixed"]
    assert test["mcnemar"]["broken"] == counts["broken"]
    assert test["mcnemar"]["p_value"] == pytest.approx(
        binomtest(counts["fixed"], counts["fixed"] + counts["broken"], 0.5).pvalue
    )
    assert test["difference"] == pytest.approx((counts["fixed"] - counts["broken"]) / 40)
    low, high = test["ci"]
    assert low <= test["difference"] <= high
    summary_a = json.loads((scored_store / "runs/run-a/summary.json").read_text())
    summary_b = json.loads((scored_store / "runs/run-b/summary.json").read_text())
    for run, summary in (("a", summary_a), ("b", summary_b)):
        headline = summary["tasks"]["ifeval"]["metrics"]["prompt_level_strict_acc"]
        assert test[run] == pytest.approx(headline)
    every = paired_tests(store, "run-a", "run-b")
    assert set(every["tasks"]) == {"ifeval", "tinymmlu"}
    assert every["tasks"]["ifeval"] == test


def test_runs_that_cover_different_samples_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    generate(str(root), "short", tasks=("ifeval",), limit={"ifeval": 8})
    generate(str(root), "long", tasks=("ifeval",), limit={"ifeval": 12})
    store = Store(str(root))
    score_store(store, progress=False)
    with pytest.raises(NotPaired) as refused:
        compare_runs(store, "short", "long", "ifeval")
    message = str(refused.value)
    assert "4 scored only in long" in message, message
    extra = sorted(_ids(root, "long") - _ids(root, "short"))
    assert len(extra) == 4 and all(sample_id in message for sample_id in extra), message
    assert "error" in paired_tests(store, "short", "long")["tasks"]["ifeval"]
    with TestClient(create_app(str(root))) as client:
        response = client.get("/compare", params={"a": "short", "b": "long", "task": "ifeval"})
        assert response.status_code == 409 and extra[0] in response.json()["detail"]
        tests = client.get("/compare/tests", params={"a": "short", "b": "long"}).json()
        assert "do not cover the same samples" in tests["tasks"]["ifeval"]["error"]
    done = subprocess.run(
        tandem("compare", "short", "long", "--store", str(root)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "do not cover the same samples" in done.stderr


def _ids(root: Path, run_id: str) -> set[str]:
    import pyarrow.parquet as pq

    folder = root / "runs" / run_id / "generations" / "ifeval"
    return {
        sample_id
        for path in folder.glob("*.parquet")
        for sample_id in pq.read_table(path, columns=["sample_id"]).column(0).to_pylist()
    }


def test_the_cli_prints_a_test_per_task(scored_store: Path) -> None:
    done = subprocess.run(
        tandem("compare", "run-a", "run-b", "--store", str(scored_store)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tests = paired_tests(Store(str(scored_store)), "run-a", "run-b")["tasks"]
    for task, test in tests.items():
        line = next(line for line in done.stdout.splitlines() if line.strip().startswith(task))
        assert f"difference {test['difference']:+.4f}" in line
        assert f"p={test['mcnemar']['p_value']:.4g}" in line
