"""tinyBenchmarks IRT estimates on a synthetic parameter file, checked by hand.

The real tinyBenchmarks.pkl is not available offline. The synthetic file below has
its exact structure (dict of benches; A (1, D, N), B (1, 1, N), anchors, weights,
scenario/subject positions, lambda) with numbers chosen so every estimate has a closed
form:

* N = 8 items, D = 2. Subjects: algebra = {0, 1, 2}, biology = {3, 4, 5, 6, 7}, so the
  balance weights are 8 / (2 * 3) = 4/3 and 8 / (2 * 5) = 4/5.
* Anchors (tinyMMLU order) = [0, 3, 4, 1], weights [0.4, 0.3, 0.2, 0.1]. Every anchor has
  a = (1, 1), b = 0.5, so p = sigmoid(t1 + t2 - 2 * 0.5): B is subtracted once per
  dimension (upstream's broadcast).
* Scores [1, 0, 1, 1]: 3 of 4 right, so the MLE has p = 3/4 on the anchors, i.e.
  t1 + t2 = 1 + ln 3, and BFGS from 0 (symmetric gradient) gives t1 = t2 = (1 + ln 3) / 2.
* Unseen items: 2: a = (1, 1), b = 0.5 -> p = 3/4; 5: a = (2, 2), b = 1 -> z = 2 ln 3,
  p = 9/10; 6: a = (0, 0), b = -ln(2)/2 -> z = ln 2, p = 2/3; 7: a = (100, 0), b = 0 ->
  z = clip(100 * t1, -30, 30) = 30, p = sigmoid(30) (~1).

Hand results:
  IRT   = 0.4*1 + 0.3*0 + 0.2*1 + 0.1*1 = 0.7
  seen part  = mean(4/3*1, 4/5*0, 4/5*1, 4/3*1) = 13/15
  model part = mean(4/3*3/4, 4/5*9/10, 4/5*2/3, 4/5*1) = 229/300
  p-IRT = 4/8 * 13/15 + 4/8 * 229/300 = 489/600 = 0.815
  gp-IRT = 0.25 * 0.7 + 0.75 * 0.815 = 0.78625
"""

from __future__ import annotations

import datetime
import hashlib
import math
import pickle

import numpy as np
import pytest

from cpu_scorer import irt
from shared.errors import TandemError

LN3 = math.log(3)
SCORES = [1, 0, 1, 1]


def synthetic_bench() -> dict:
    A = np.zeros((1, 2, 8))
    B = np.zeros((1, 1, 8))
    for item in (0, 3, 4, 1, 2):
        A[0, :, item] = (1.0, 1.0)
        B[0, 0, item] = 0.5
    A[0, :, 5], B[0, 0, 5] = (2.0, 2.0), 1.0
    A[0, :, 6], B[0, 0, 6] = (0.0, 0.0), -math.log(2) / 2
    A[0, :, 7], B[0, 0, 7] = (100.0, 0.0), 0.0
    return {
        "seen_examples": [0, 3, 4, 1],
        "examples_weights": {"mmlu": np.array([0.4, 0.3, 0.2, 0.1])},
        "irt_parameters": {"A": A, "B": B},
        "scenarios_position": {"mmlu": list(range(8))},
        "subscenarios_position": {"mmlu": {"algebra": [0, 1, 2], "biology": [3, 4, 5, 6, 7]}},
        "optimal_lambdas": {"mmlu": 0.25},
    }


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "tinyBenchmarks.pkl"
    path.write_bytes(pickle.dumps({"mmlu": synthetic_bench(), "lb": {}}))
    return path


def test_balance_weights_are_subject_macro_average(params_file):
    params = irt.load_params(params_file)
    assert params.balance_weights() == pytest.approx([4 / 3] * 3 + [4 / 5] * 5)


def test_theta_is_the_closed_form_mle(params_file):
    params = irt.load_params(params_file)
    seen = params.seen_examples
    theta = irt.fit_theta(np.array(SCORES, float), params.A[:, :, seen], params.B[:, :, seen])
    assert theta == pytest.approx([(1 + LN3) / 2] * 2, abs=1e-5)


def test_item_curve_subtracts_b_per_dimension_and_clips():
    theta = np.array([(1 + LN3) / 2] * 2)
    params = irt.validate_params({"mmlu": synthetic_bench()})
    p = irt.item_curve(theta, params.A, params.B)[0]
    assert p[5] == pytest.approx(0.9)  # 4t - 2*1 = 2 ln 3; a.theta - b would give 0.96...
    assert p[6] == pytest.approx(2 / 3)
    assert p[7] == pytest.approx(1 / (1 + math.exp(-30)), rel=1e-15)


def test_estimates_match_hand_computation(params_file):
    estimates = irt.estimate(irt.load_params(params_file), SCORES)
    assert set(estimates) == {"irt", "pirt", "gpirt"}
    assert estimates["irt"] == pytest.approx(0.7, abs=1e-12)
    assert estimates["pirt"] == pytest.approx(489 / 600, abs=1e-5)
    assert estimates["gpirt"] == pytest.approx(0.78625, abs=1e-5)


def test_all_right_and_all_wrong_stay_in_range(params_file):
    params = irt.load_params(params_file)
    high = irt.estimate(params, [1, 1, 1, 1])
    low = irt.estimate(params, [0, 0, 0, 0])
    assert high["irt"] == pytest.approx(1.0)
    assert low["irt"] == 0.0
    for value in (*high.values(), *low.values()):
        assert 0.0 <= value <= 1.5  # balance weights can push a mean above 1
    assert low["pirt"] < high["pirt"]


def test_scenario_slice_for_multi_scenario_benches():
    # Two scenarios of 2 items, 1 anchor each; scenario "b" must use the second anchor.
    bench = {
        "seen_examples": [0, 3],
        "examples_weights": {"a": [1.0], "b": [1.0]},
        "irt_parameters": {"A": np.ones((1, 1, 4)), "B": np.zeros((1, 1, 4))},
        "scenarios_position": {"a": [0, 1], "b": [2, 3]},
        "subscenarios_position": {"a": {"x": [0, 1]}, "b": {"y": [2, 3]}},
        "optimal_lambdas": {"a": 0.0, "b": 1.0},
    }
    params = irt.validate_params({"lb": bench}, bench="lb")
    assert irt.estimate(params, [1], scenario="b")["gpirt"] == 1.0
    assert irt.estimate(params, [0], scenario="b")["irt"] == 0.0
    with pytest.raises(TandemError, match="scenario 'c' is not in the parameter file"):
        irt.estimate(params, [1], scenario="c")


def test_wrong_number_of_scores_is_refused(params_file):
    with pytest.raises(TandemError, match="IRT needs 4 scores"):
        irt.estimate(irt.load_params(params_file), [1, 0, 1])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("optimal_lambdas"), r"missing key\(s\) \['optimal_lambdas'\]"),
        (lambda b: b["irt_parameters"].pop("B"), r"irt_parameters has no 'B'"),
        (
            lambda b: b["irt_parameters"].update(A=np.zeros((2, 8))),
            r"\['A'\] must have shape \(1, D, N\), got \(2, 8\)",
        ),
        (
            lambda b: b["irt_parameters"].update(B=np.zeros((1, 2, 8))),
            r"\['B'\] must have shape \(1, 1, 8\), got \(1, 2, 8\)",
        ),
        (lambda b: b.update(seen_examples=[0, 3, 4, 99]), r"seen_examples holds indices outside"),
        (
            lambda b: b["examples_weights"].update(mmlu=[0.5, 0.5, 0.5, 0.5]),
            r"examples_weights\['mmlu'\] sums to 2.000000, not 1",
        ),
        (
            lambda b: b["examples_weights"].update(mmlu=[1.0]),
            r"examples_weights\['mmlu'\] must hold 4 finite weights",
        ),
        (lambda b: b["optimal_lambdas"].update(mmlu=1.5), r"outside \[0, 1\]"),
        (
            lambda b: b.update(subscenarios_position={"other": {"x": [0]}}),
            r"subscenarios_position has no scenario 'mmlu'",
        ),
        (lambda b: b.update(optimal_lambdas={}), r"optimal_lambdas is empty"),
        (lambda b: b.update(irt_parameters=[1]), r"irt_parameters must be a dict, got list"),
        (
            lambda b: b["scenarios_position"].update(mmlu=list(range(5))),
            r"covers items 0..4 but A and B describe 8 items",
        ),
    ],
)
def test_structure_errors_name_the_key(tmp_path, mutate, message):
    bench = synthetic_bench()
    mutate(bench)
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"mmlu": bench}))
    with pytest.raises(TandemError, match=message) as caught:
        irt.load_params(path)
    assert str(path) in str(caught.value)


def test_missing_bench_lists_what_the_file_holds(params_file):
    with pytest.raises(TandemError, match=r"\['alpaca'\] no such bench; the file holds"):
        irt.load_params(params_file, bench="alpaca")


def test_not_a_dict_and_not_a_pickle(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(TandemError, match="top level must be a dict"):
        irt.load_params(path)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(TandemError, match="cannot unpickle"):
        irt.load_params(garbage)
    with pytest.raises(TandemError, match="cannot read the IRT parameter file"):
        irt.load_params(tmp_path / "absent.pkl")


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"mmlu": {"x": datetime.date(2024, 1, 1)}}))
    with pytest.raises(TandemError, match="refusing to load datetime.date"):
        irt.load_params(path)


def test_numpy1_pickles_load(tmp_path):
    # Files written under numpy 1.x name numpy.core.multiarray instead of numpy._core.
    data = pickle.dumps({"mmlu": synthetic_bench()}, protocol=2)
    path = tmp_path / "np1.pkl"
    path.write_bytes(data.replace(b"numpy._core", b"numpy.core"))
    assert irt.load_params(path).n_items == 8


def test_summarize_without_file_says_why(params_file):
    summary = irt.summarize([1, 0, 1, 1], None)
    assert summary["acc"] == 0.75
    assert "irt" not in summary
    assert "tinyBenchmarks.pkl" in summary["irt_absent"]
    full = irt.summarize(SCORES, params_file)
    assert full["gpirt"] == pytest.approx(0.78625, abs=1e-5)
    short = irt.summarize([1, 1], params_file)
    assert "needs all 4" in short["irt_absent"]


def test_fetch_params_checks_sha256_and_writes_atomically(tmp_path, params_file, monkeypatch):
    url = params_file.as_uri()  # a file:// URL: the same code path, offline
    dest = tmp_path / "out" / "tinyBenchmarks.pkl"
    with pytest.raises(TandemError, match="expected c3b6e426"):
        irt.fetch_params(dest, url=url)
    assert not dest.exists()
    monkeypatch.setattr(irt, "PARAMS_SHA256", hashlib.sha256(params_file.read_bytes()).hexdigest())
    assert irt.fetch_params(dest, url=url) == dest
    assert dest.read_bytes() == params_file.read_bytes()
    assert not list(dest.parent.glob(".*.tmp"))
