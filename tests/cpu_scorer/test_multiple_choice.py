"""acc / acc_norm / stderr / f1 on crafted log-probs, checked by hand."""

from __future__ import annotations

import math

import pytest

from cpu_scorer.multiple_choice import aggregate, argmax, f1, mean_stderr, score_row
from shared.errors import TandemError


def test_acc_and_acc_norm_can_disagree():
    # Raw: -4 > -6, so choice 0 wins acc. Per character: -4/2 = -2.0 < -6/12 = -0.5,
    # so the long choice 1 wins acc_norm.
    result = score_row([-4.0, -6.0], ["no", "yes, it does"], gold=1)
    assert result["prediction"] == 0
    assert result["metrics"] == {"acc": 0.0, "acc_norm": 1.0}


def test_both_right():
    result = score_row([-1.0, -3.0, -2.0], ["a", "b", "c"], gold=0)
    assert result["metrics"] == {"acc": 1.0, "acc_norm": 1.0}


def test_length_is_characters_not_bytes():
    # "naïve": 5 characters, 6 UTF-8 bytes. By characters -5/5 = -1.0 < -0.95 -> choice 1;
    # by bytes -5/6 = -0.83 > -0.95 would pick choice 0.
    result = score_row([-5.0, -0.95], ["naïve", "x"], gold=1)
    assert result["metrics"]["acc_norm"] == 1.0
    result = score_row([-5.0, -0.95], ["naïve", "x"], gold=0)
    assert result["metrics"]["acc_norm"] == 0.0


def test_ties_go_to_the_first_index():
    assert argmax([-1.0, -1.0, -2.0]) == 0
    assert argmax([-3.0, -1.0, -1.0]) == 1
    result = score_row([-2.0, -2.0], ["ab", "cd"], gold=1)
    assert result["prediction"] == 0
    assert result["metrics"] == {"acc": 0.0, "acc_norm": 0.0}


def test_winogrande_shared_continuation_makes_acc_norm_equal_acc():
    texts = ["always got the easier cases."] * 2
    for logprobs in ([-10.0, -9.0], [-9.0, -10.0]):
        metrics = score_row(logprobs, texts, gold=1)["metrics"]
        assert metrics["acc"] == metrics["acc_norm"]


def test_no_gold_gives_prediction_only():
    result = score_row([-2.0, -1.0], ["a", "b"], gold=None)
    assert result["metrics"] == {}
    assert result["prediction"] == 1


@pytest.mark.parametrize(
    ("logprobs", "texts", "gold", "message"),
    [
        ([-1.0], ["a", "b"], 0, "1 log-probs for 2 choice texts"),
        ([-1.0, -2.0], ["a", "b"], 2, "gold index 2 out of range"),
        ([math.nan, -2.0], ["a", "b"], 0, "NaN"),
        ([], [], 0, "no choices"),
    ],
)
def test_bad_rows_are_refused(logprobs, texts, gold, message):
    with pytest.raises(TandemError, match=message):
        score_row(logprobs, texts, gold)


def test_aggregate_means_and_sample_stderr():
    rows = [
        {"acc": 1.0, "acc_norm": 1.0},
        {"acc": 0.0, "acc_norm": 1.0},
        {"acc": 1.0, "acc_norm": 0.0},
        {"acc": 1.0, "acc_norm": 1.0},
    ]
    summary = aggregate(rows)
    assert summary["acc"] == 0.75
    # Sample variance of [1, 0, 1, 1]: mean .75, squares .0625*3 + .5625 = .75, /3 = .25;
    # stderr = sqrt(.25 / 4) = .25.
    assert summary["acc_stderr"] == pytest.approx(0.25)
    assert summary["acc_norm"] == 0.75
    assert summary["acc_norm_stderr"] == pytest.approx(0.25)


def test_stderr_of_one_value_is_zero():
    assert mean_stderr([1.0]) == 0.0
    assert aggregate([{"acc": 1.0}]) == {"acc": 1.0, "acc_stderr": 0.0}


def test_f1_positive_class_one():
    # TP = 2 (rows 0, 1), FP = 1 (row 2), FN = 1 (row 3): 2*2 / (4 + 1 + 1) = 2/3.
    assert f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert f1([0, 0], [0, 0]) == 0.0
