"""The packed log-likelihood scorer's branch groups (``_hf_loglik``): a row's trunk runs
once, the rest in groups against its cache, with the numbers of one plain row per request.
Tiny random models, so this runs in the fast suite."""

from __future__ import annotations

import pytest
import torch

from gpu_worker.backends import _hf_loglik
from gpu_worker.backends._hf_loglik import MIN_SHARED, LoglikelihoodScorer, _branch_groups
from gpu_worker.tokens import common_prefix


def _depths(sequences: list[tuple[int, ...]]) -> list[int]:
    """Each node's depth in the depth-first layout of the sequences' prefix tree, as the
    scorer lays out a row."""
    depth: list[int] = []
    path: list[int] = []
    before: tuple[int, ...] = ()
    for sequence in sorted(sequences):
        del path[common_prefix(before, sequence) :]
        for _ in sequence[len(path) :]:
            path.append(len(depth))
            depth.append(len(path) - 1)
        before = sequence
    return depth


def test_groups_start_where_a_sequence_branches_off_near_the_trunk():
    trunk = tuple(range(100, 104))
    question = (1, 2, 3, 4, 5, 6)
    sequences = [
        trunk + question + (7, 8),  # nodes 4-9 the question, 10-11 a choice
        trunk + question + (9, 8),  # 12-13: the other choice, branching at depth 10
        trunk + (20, 21, 22),  # 14-16
        trunk + (20, 23, 24),  # 17-18: branches off the one before at depth 5
        trunk + tuple(range(30, 50)),  # 19-38: longer than a group
    ]
    depth = _depths(sequences)
    assert len(depth) == 39
    # Each group ends at the last branch within 8 nodes; the 20-node sequence is a group
    # alone. A group may start between the two choices: their question (6 nodes, under
    # MIN_SHARED) runs again with the second.
    assert list(_branch_groups(depth, 4, 8)) == [(4, 12), (12, 19), (19, 39)]
    assert list(_branch_groups(depth, 4, 100)) == [(4, 39)]
    assert list(_branch_groups(depth, 4, 1)) == [(4, 12), (12, 14), (14, 17), (17, 19), (19, 39)]


def test_groups_never_start_within_a_long_question():
    """Two choices behind a question of MIN_SHARED nodes or more: the second choice's
    branch is no place to start a group (the question would run again)."""
    trunk = tuple(range(100, 110))
    question = tuple(range(MIN_SHARED))
    sequences = [trunk + question + (7,), trunk + question + (8,), trunk + (50, 51)]
    depth = _depths(sequences)
    assert list(_branch_groups(depth, 10, 4)) == [(10, 10 + MIN_SHARED + 2), (44, 46)]
    # One node shorter, the question is short enough to run again.
    question = question[1:]
    sequences = [trunk + question + (7,), trunk + question + (8,), trunk + (50, 51)]
    depth = _depths(sequences)
    assert list(_branch_groups(depth, 10, 4)) == [(10, 42), (42, 45)]


def test_group_edges():
    assert list(_branch_groups(list(range(5)), 4, 8)) == [(4, 5)]  # one node after the trunk
    depth = _depths([(1, 2, 3), (1, 2, 4), (1, 2, 5, 6)])
    assert list(_branch_groups(depth, 2, 0)) == [(2, 3), (3, 4), (4, 6)]


def _tiny(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    shape = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
        # Large weights: logits far from uniform, so no greedy token is a near tie.
        initializer_range=0.3,
    )
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**shape)).eval()
    # The cache's layers are sliding-window layers. A 110-token window is wider than any
    # sequence here (it must be, to pack) but narrower than a trunk and its group.
    return MistralForCausalLM(MistralConfig(sliding_window=110, **shape)).eval()


def _fewshot_pairs(seed: int) -> list[tuple[list[int], list[int]]]:
    """Two blocks of 60 tokens, each with questions of 3-40 tokens and 2-4 choices of 1-4
    tokens behind it, as a few-shot task's requests."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, 300, (n,), generator=generator).tolist()

    pairs = []
    for _ in range(2):
        block = tokens(60)
        for length in (3, 40, 12, 25, 7, 33):
            question = block + tokens(length)
            for width in (1, 3, 2, 4)[: 2 + length % 3]:
                pairs.append((question, tokens(width)))
    return pairs


def _scorer(model) -> LoglikelihoodScorer:
    """Rows of 64 tokens: a row grows past them only behind its block, so each block
    has a row of its own."""
    return LoglikelihoodScorer(
        model, device="cpu", pad_id=0, prefix_id=1, max_length=1024, pack_tokens=64
    )


def _record_forwards(model, monkeypatch) -> list[tuple[bool, int]]:
    """Each forward from now on, as (with a mask, tokens)."""
    forwards: list[tuple[bool, int]] = []
    forward = model.forward

    def spy(*args, **kwargs):
        forwards.append((kwargs.get("attention_mask") is not None, kwargs["input_ids"].shape[1]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    return forwards


def _assert_plain(got, expected) -> None:
    for index, result in enumerate(got):
        assert result.logprob == pytest.approx(expected[index].logprob, rel=1e-5, abs=1e-5)
        assert result.is_greedy == expected[index].is_greedy


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_branch_groups_give_the_numbers_of_plain_rows(kind, monkeypatch):
    model = _tiny(kind)
    scorer = _scorer(model)
    assert scorer.packing_depth > 0
    pairs = _fewshot_pairs(3)
    expected = dict(scorer._plain_rows(pairs))
    forwards = _record_forwards(model, monkeypatch)
    first: list[tuple[bool, int]] = []
    # One group behind each block; groups of about 30 nodes; a group at every branch,
    # the second choice of a question included (its question runs again with it).
    for size in (10_000, 30, 1):
        monkeypatch.setattr(_hf_loglik, "BRANCH_TOKENS", size)
        forwards.clear()
        _assert_plain(scorer.loglikelihood(pairs), expected)
        first = first or list(forwards)
        trunks = [n for masked, n in forwards if not masked]
        groups = [n for masked, n in forwards if masked]
        assert trunks == [60, 60]  # each block once, causal
        if size == 10_000:
            assert len(groups) == 2  # one masked forward behind each block
        elif size == 30:
            assert len(groups) > 4 and max(groups) <= 2 * size
        else:
            assert sum(groups) > sum(n for masked, n in first if masked)  # questions again


def test_the_cache_goes_back_to_the_trunk_between_groups(monkeypatch):
    """Each group starts from the trunk's own tensors, at the trunk's length."""
    scorer = _scorer(_tiny("mistral"))
    restored = []
    restore = _hf_loglik._restore

    def spy(cache, saved, trunk):
        restore(cache, saved, trunk)
        assert cache.get_seq_length() == trunk == 60
        assert all(
            layer.keys is keys and layer.values is values
            for layer, (keys, values) in zip(cache.layers, saved, strict=True)
        )
        restored.append(trunk)

    monkeypatch.setattr(_hf_loglik, "_restore", spy)
    monkeypatch.setattr(_hf_loglik, "BRANCH_TOKENS", 30)
    scorer.loglikelihood(_fewshot_pairs(3))
    assert len(restored) > 4


def test_a_trunk_cache_the_groups_cannot_extend_runs_the_row_masked(monkeypatch):
    model = _tiny("llama")
    scorer = _scorer(model)
    pairs = _fewshot_pairs(5)
    expected = dict(scorer._plain_rows(pairs))
    monkeypatch.setattr(_hf_loglik, "_trunk_state", lambda cache, trunk: None)
    forwards = _record_forwards(model, monkeypatch)
    _assert_plain(scorer.loglikelihood(pairs), expected)
    # Per block: the trunk, then its whole row (trunk included) as one masked forward.
    assert [masked for masked, _ in forwards] == [False, True, False, True]
    assert all(n > 60 for masked, n in forwards if masked)
