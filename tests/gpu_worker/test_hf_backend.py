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


def test_shared_context_cache_equals_full_rows(embedded_backend):
    """Multi-token choices of several questions (contexts of different lengths, so the
    shared-context pass is left-padded) equal one full forward per request."""
    backend = embedded_backend
    questions = {
        "Question: What do bees make?\nAnswer:": [" honey from nectar", " paper wasps", " milk"],
        "Question: Which is the largest ocean on Earth, by area and by volume?\nAnswer:": [
            " the Pacific Ocean",
            " the Atlantic Ocean",
            " the small Arctic Ocean",
            " Lake Superior",
        ],
    }
    requests = [LoglikelihoodRequest(c, k) for c, ks in questions.items() for k in ks]
    assert sum(len(backend.split_pair(r.context, r.continuation)[1]) > 1 for r in requests) >= 5
    together = backend.loglikelihood(requests)
    rows = dict(
        backend._loglikelihood_rows(
            [backend.split_pair(r.context, r.continuation) for r in requests]
        )
    )
    for index, (shared, full) in enumerate(
        zip(together, [rows[i] for i in range(len(requests))], strict=True)
    ):
        assert abs(shared.logprob - full.logprob) < 1e-4, requests[index]
        assert shared.is_greedy == full.is_greedy
        assert shared.continuation_tokens == full.continuation_tokens
