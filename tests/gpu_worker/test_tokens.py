"""The token rules hf and vLLM share: pure functions, no model."""

from __future__ import annotations

from gpu_worker.tokens import common_prefix, rolling_windows, truncate_prompt


def test_truncation_cuts_from_the_left_to_leave_room_for_the_answer() -> None:
    ids = list(range(10))
    # window 8, 3 new tokens: 5 prompt tokens survive, the last five.
    assert truncate_prompt(ids, 0, 8, 3, None) == ([5, 6, 7, 8, 9], 5)
    # max_prompt_tokens wins over the window.
    assert truncate_prompt(ids, 0, 100, 3, 4) == ([6, 7, 8, 9], 6)
    # An answer as long as the window still leaves one prompt token.
    assert truncate_prompt(ids, 0, 8, 8, None) == ([9], 9)
    assert truncate_prompt(ids, 0, 100, 3, None) == (ids, 0)
    # An empty prompt becomes the EOS token, nothing cut.
    assert truncate_prompt([], 7, 8, 3, None) == ([7], 0)


def test_rolling_windows_score_every_token_once() -> None:
    # Short text: one window.
    assert rolling_windows(5, 8, None, None) == [(0, 0, 5)]
    # Disjoint windows (stride = window): each reads the window before its targets.
    assert rolling_windows(10, 4, None, None) == [(0, 0, 4), (4, 4, 8), (6, 8, 10)]
    # Strided: 2 new targets per window of 4, the rest is context.
    plan = rolling_windows(8, 100, 4, 2)
    assert plan == [(0, 0, 4), (2, 4, 6), (4, 6, 8)]
    for count, limit, window, stride in [(10, 4, None, None), (8, 100, 4, 2), (33, 7, 5, 3)]:
        plan = rolling_windows(count, limit, window, stride)
        targets = [t for _, done, until in plan for t in range(done + 1, until + 1)]
        assert targets == list(range(1, count + 1))
        size = min(window or limit, limit)
        assert all(until - start <= size for start, _, until in plan)
    assert rolling_windows(0, 4, None, None) == []


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix((1, 2), (1, 2, 3)) == 2
    assert common_prefix([], [1]) == 0
