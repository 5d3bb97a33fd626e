"""The hf backend on the embedded SmolLM2 (fp32, CPU): padding, templates, log-probs."""

from __future__ import annotations

import pytest

from gpu_worker.backends import GenerationRequest, LoglikelihoodRequest

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write one sentence about the moon.",
    "What is 7 times 6?",
    "Name a primary colour in lowercase.",
    "Translate 'bonjour' to English, and explain in two sentences where the word comes from.",
]


def test_batched_greedy_equals_one_at_a_time(embedded_backend):
    requests = [GenerationRequest(embedded_backend.render(p, True), 24) for p in PROMPTS]
    batched = embedded_backend.generate(requests)
    assert len(batched) == len(requests)
    assert {r.batch_size for r in batched} == {len(requests)}  # really one padded batch
    for request, together in zip(requests, batched, strict=True):
        alone = embedded_backend.generate([request])[0]
        assert together.text == alone.text
        assert together.generated_tokens == alone.generated_tokens
        assert together.finish_reason == alone.finish_reason


def test_chat_template_on_and_off(embedded_backend):
    raw = embedded_backend.render("Hi there", chat=False)
    chat = embedded_backend.render("Hi there", chat=True)
    assert raw == "Hi there"
    assert chat.startswith("<|im_start|>") and "<|im_start|>user\nHi there<|im_end|>" in chat
    assert chat.endswith("<|im_start|>assistant\n")  # add_generation_prompt=True


def test_stop_strings_cut_the_response(embedded_backend):
    prompt = embedded_backend.render("Count from 1 to 20.", True)
    full = embedded_backend.generate([GenerationRequest(prompt, 40)])[0]
    words = full.text.split()
    assert len(words) > 3
    stop = words[3]  # a string the unconstrained greedy output is known to contain
    stopped = embedded_backend.generate([GenerationRequest(prompt, 40, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.generated_tokens < full.generated_tokens


def test_loglikelihood_equals_a_direct_forward(embedded_backend):
    import torch

    backend = embedded_backend
    context = "Question: Which planet is known as the red planet?\nAnswer:"
    continuations = [" Mars", " Venus", " the planet Jupiter", " A"]
    batched = backend.loglikelihood([LoglikelihoodRequest(context, c) for c in continuations])
    for continuation, result in zip(continuations, batched, strict=True):
        alone = backend.loglikelihood([LoglikelihoodRequest(context, continuation)])[0]
        assert abs(alone.logprob - result.logprob) < 1e-5
        assert alone.is_greedy == result.is_greedy
        # Direct: one unpadded forward over context+continuation, lm-eval's split.
        whole = backend.encode(context + continuation)
        n_context = len(backend.encode(context))
        with torch.inference_mode():
            logits = backend.model(torch.tensor([whole])).logits[0].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        target = whole[n_context:]
        direct = sum(float(log_probs[n_context - 1 + i, t]) for i, t in enumerate(target))
        greedy = all(int(log_probs[n_context - 1 + i].argmax()) == t for i, t in enumerate(target))
        assert abs(direct - result.logprob) < 1e-4
        assert greedy == result.is_greedy
        assert result.continuation_tokens == len(target)


def test_the_space_belongs_to_the_continuation(embedded_backend):
    context_ids, continuation_ids = embedded_backend.split_pair("Answer: ", "A")
    assert embedded_backend.tokenizer.decode(continuation_ids) == " A"
    assert embedded_backend.tokenizer.decode(context_ids) == "Answer:"


# Several questions sharing a few-shot block, choices that are prefixes of one another,
# a one-token choice, and contexts of different lengths.
SHOTS = "Question: What colour is the sky?\nAnswer: blue\n\n"
PACKED_QUESTIONS = {
    SHOTS + "Question: What do bees make?\nAnswer:": [" honey", " honey from nectar", " milk"],
    SHOTS + "Question: Which is the largest ocean on Earth, by area and by volume?\nAnswer:": [
        " the Pacific",
        " the Pacific Ocean",
        " the small Arctic Ocean",
        " Lake Superior",
    ],
    "Question: What do bees make?\nAnswer:": [" honey", " wax and honey"],
}


def _full_rows(backend, requests):
    """lm-eval's way: one plain row per request (the backend's fallback path)."""
    rows = dict(
        backend.scorer._plain_rows(
            [backend.split_pair(r.context, r.continuation) for r in requests]
        )
    )
    return [rows[i] for i in range(len(requests))]


def _assert_same(got, expected, requests):
    for request, a, b in zip(requests, got, expected, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-4, request
        assert a.is_greedy == b.is_greedy, request
        assert a.continuation_tokens == b.continuation_tokens
        assert a.context_tokens == b.context_tokens


@pytest.mark.parametrize("pack_tokens", [None, 24])
def test_packed_rows_equal_full_rows(embedded_backend, monkeypatch, pack_tokens):
    """Packing (shared prefixes once, tree attention, no padding) equals one full
    forward per request, with the default row size and with rows so small that
    questions and even one question's choices are split across rows."""
    backend = embedded_backend
    requests = [LoglikelihoodRequest(c, k) for c, ks in PACKED_QUESTIONS.items() for k in ks]
    expected = _full_rows(backend, requests)
    if pack_tokens is not None:
        monkeypatch.setattr(backend.scorer, "pack_tokens", pack_tokens)
    seen = []
    packed = type(backend.scorer)._packed_rows

    def spy(self, pairs):
        for index, result in packed(self, pairs):
            seen.append(result.batch_size)
            yield index, result

    monkeypatch.setattr(type(backend.scorer), "_packed_rows", spy)
    _assert_same(backend.loglikelihood(requests), expected, requests)
    assert len(seen) == len(requests)  # every request went through the packed path
    if pack_tokens is not None:
        assert max(seen) < len(requests)  # ... in several rows


# A few-shot block past MIN_SHARED tokens: a row's trunk runs once as a plain causal
# sequence and the questions attend to its KV cache. The first request's input (its
# context; " bees" is one token) is the prefix every other input shares, so the trunk is
# exactly that input and its scored position lies in the trunk.
BLOCK = "".join(f"Question: What is {a} plus {a}?\nAnswer: {2 * a}\n\n" for a in range(2, 7))
TRUNK_QUESTIONS = {
    BLOCK + "Question: What do": [" bees"],
    BLOCK + "Question: What do bees make?\nAnswer:": [" honey", " honey from nectar", " milk"],
    BLOCK + "Question: What do cows drink?\nAnswer:": [" water", " milk"],
}


class _ForwardSpy:
    """The model, with each forward's use of a mask and a cache recorded."""

    def __init__(self, model, calls):
        self._model, self._calls = model, calls

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._calls.append(
            (
                kwargs.get("attention_mask") is not None,
                cache is not None,
                kwargs["input_ids"].shape[1],
            )
        )
        return self._model(*args, **kwargs)


@pytest.mark.parametrize("ignores_logits_to_keep", [False, True])
def test_a_shared_trunk_runs_once_causally_and_gives_the_same_numbers(
    embedded_backend, monkeypatch, ignores_logits_to_keep
):
    backend = embedded_backend
    requests = [LoglikelihoodRequest(c, k) for c, ks in TRUNK_QUESTIONS.items() for k in ks]
    pairs = [backend.split_pair(r.context, r.continuation) for r in requests]
    assert len(pairs[0][1]) == 1 and len(pairs[0][0]) > 32
    expected = _full_rows(backend, requests)
    calls = []
    model = _IgnoresLogitsToKeep(backend.model) if ignores_logits_to_keep else backend.model
    monkeypatch.setattr(backend.scorer, "model", _ForwardSpy(model, calls))
    _assert_same(backend.loglikelihood(requests), expected, requests)
    # One row: the trunk (the first request's whole input) without a mask, the kernel's
    # causal path; then the branches with a mask and the trunk's cache.
    trunk = len(pairs[0][0])
    inputs = [tuple(c + k[:-1]) for c, k in pairs]
    nodes = len({seq[: i + 1] for seq in inputs for i in range(len(seq))})  # tree nodes
    assert calls == [(False, False, trunk), (True, True, nodes - trunk)]


class _DropsTheCache(_ForwardSpy):
    """A model whose forward returns no cache (one the branches could not extend)."""

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        for name in ("cache", "past_key_values"):
            if name in out:
                out[name] = None
        return out


def test_a_trunk_whose_cache_is_unusable_runs_as_one_masked_row(embedded_backend, monkeypatch):
    backend = embedded_backend
    requests = [LoglikelihoodRequest(c, k) for c, ks in TRUNK_QUESTIONS.items() for k in ks]
    pairs = [backend.split_pair(r.context, r.continuation) for r in requests]
    expected = _full_rows(backend, requests)
    calls = []
    monkeypatch.setattr(backend.scorer, "model", _DropsTheCache(backend.model, calls))
    _assert_same(backend.loglikelihood(requests), expected, requests)
    inputs = [tuple(c + k[:-1]) for c, k in pairs]
    nodes = len({seq[: i + 1] for seq in inputs for i in range(len(seq))})
    assert calls == [(False, False, len(pairs[0][0])), (True, False, nodes)]


def test_packing_shares_prefixes_and_pads_nothing():
    from gpu_worker.backends._hf_loglik import _pack_rows

    sequences = [(1, 2, 3, 4), (1, 2, 3, 5), (1, 2, 3, 5), (1, 2), (9, 9, 9, 9, 9, 9), (7,)]

    def rows(budget):
        return [[i for i, _ in row] for row in _pack_rows(sequences, budget, 1 / 3456)]

    # The tree of the first four has 5 nodes (1 2 3 4, 5); a row of 5 holds them all,
    # the duplicate and the prefix (1, 2) adding nothing.
    assert rows(5) == [[3, 0, 1, 2], [5], [4]]
    # Each comes with the tokens it shares with the one before it in its row.
    assert next(_pack_rows(sequences, 5, 1 / 3456)) == [(3, 0), (0, 2), (1, 3), (2, 4)]
    # A sequence longer than the row is a row of its own, with those adding nothing
    # to it (its duplicate).
    assert rows(3) == [[3], [0], [1, 2], [5], [4]]
    assert list(_pack_rows(sequences, 3, 1 / 3456))[2] == [(1, 0), (2, 4)]


def test_a_long_shared_prefix_keeps_a_row_together_past_its_budget(monkeypatch):
    """Few-shot contexts: five questions behind one 100-token block pack into one row
    (the block once) though each alone passes the 64-token budget; unrelated long
    sequences still get rows of their own. A row sharing its block grows while the
    attention its new nodes add costs less than running the block again, and never
    past PACK_DEPTH_LIMIT."""
    from gpu_worker.backends import _hf_loglik
    from gpu_worker.backends._hf_loglik import _pack_rows

    pair_cost = 1 / (6 * 64)
    block = tuple(range(1000, 1100))
    items = [block + tuple(range(10 * k, 10 * k + 10)) for k in range(5)]
    others = [tuple(range(2000 + 200 * k, 2000 + 200 * k + 80)) for k in range(2)]
    rows = list(_pack_rows(items + others, 64, pair_cost))
    assert sorted(i for i, _ in rows[0]) == [0, 1, 2, 3, 4]
    assert [shared for _, shared in rows[0]] == [0, 100, 100, 100, 100]
    assert [[i for i, _ in row] for row in rows[1:]] == [[5], [6]]

    def sizes(many, cost):
        return [100 + 10 * len(row) for row in _pack_rows(many, 64, cost)]

    # 500 questions of 10 tokens: a question's 10 nodes attending to a row of s nodes
    # cost 10 * s * pair_cost; the row is cut once that passes the block's 100 tokens.
    many = [block + tuple(range(20_000 + 10 * k, 20_000 + 10 * k + 10)) for k in range(500)]
    grown = sizes(many, pair_cost)
    assert len(grown) > 1 and max(grown) > 64 * 4
    # A row's last question went in because 10 x (its row's size then + 10) x pair_cost
    # was under the block's 100; one more would not have.
    assert all(10 * size * pair_cost < 100 for size in grown)
    assert all(10 * (size + 10) * pair_cost >= 100 for size in grown[:-1])
    # ... and never past the depth limit, however cheap attention is.
    monkeypatch.setattr(_hf_loglik, "PACK_DEPTH_LIMIT", 1000)
    capped = sizes(many, 1e-9)
    assert max(capped) <= 1000 and len(capped) == 6


def test_packing_depth_follows_the_attention_kernel_and_window(embedded_backend, monkeypatch):
    backend = embedded_backend
    scorer = backend.scorer
    config = backend.model.config
    from gpu_worker.backends import _hf_loglik

    # sdpa, no sliding window: the model's window, capped (the mask is length^2)
    assert scorer.packing_depth == min(backend.max_length, _hf_loglik.PACK_DEPTH_LIMIT)
    with monkeypatch.context() as patch:
        patch.setattr(_hf_loglik, "PACK_DEPTH_LIMIT", 100)
        assert scorer.packing_depth == 100
    with monkeypatch.context() as patch:
        # A kernel that takes no custom mask: nothing is packed.
        patch.setattr(config, "_attn_implementation_internal", "flash_attention_2")
        assert scorer.packing_depth == 0
    with monkeypatch.context() as patch:
        # A recurrent layer would carry its state through sibling branches.
        patch.setattr(config, "layer_types", ["full_attention", "linear_attention"], raising=False)
        assert scorer.packing_depth == 0
        patch.setattr(config, "layer_types", ["full_attention", "sliding_attention"])
        assert scorer.packing_depth > 0
    with monkeypatch.context() as patch:
        # Rotary frequencies chosen from the longest position in the forward.
        for name in ("rope_parameters", "rope_scaling"):
            patch.setattr(config, name, {"rope_type": "dynamic", "factor": 2.0}, raising=False)
        assert scorer.packing_depth == 0
    monkeypatch.setattr(config, "sliding_window", 8, raising=False)
    assert scorer.packing_depth == 8


def test_what_cannot_be_packed_runs_as_full_rows(embedded_backend, monkeypatch):
    """Sequences longer than a sliding window (8 tokens here) fall back to one full
    row per request, with the same numbers."""
    backend = embedded_backend
    requests = [LoglikelihoodRequest(c, k) for c, ks in PACKED_QUESTIONS.items() for k in ks]
    expected = _full_rows(backend, requests)
    monkeypatch.setattr(backend.model.config, "sliding_window", 8, raising=False)

    def refuse(self, pairs):
        assert not pairs, "nothing here fits a window of 8 tokens"
        yield from ()

    monkeypatch.setattr(type(backend.scorer), "_packed_rows", refuse)
    _assert_same(backend.loglikelihood(requests), expected, requests)


class _IgnoresLogitsToKeep:
    """A model whose forward takes logits_to_keep but returns every position's logits
    (remote-code models, older forwards that sink unknown kwargs)."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, logits_to_keep=0, **kwargs):
        return self._model(*args, **kwargs)


def test_a_forward_that_ignores_logits_to_keep_gives_the_same_numbers(
    embedded_backend, monkeypatch
):
    from gpu_worker.backends import RollingRequest

    backend = embedded_backend
    requests = [LoglikelihoodRequest(c, k) for c, ks in PACKED_QUESTIONS.items() for k in ks]
    rolling = [RollingRequest("The quick brown fox jumps over the lazy dog. " * 3, 16, 8)]
    expected = backend.loglikelihood(requests), backend.loglikelihood_rolling(rolling)
    monkeypatch.setattr(backend.scorer, "model", _IgnoresLogitsToKeep(backend.model))
    _assert_same(backend.loglikelihood(requests), expected[0], requests)
    (got,) = backend.loglikelihood_rolling(rolling)
    assert abs(got.logprob - expected[1][0].logprob) < 1e-4
