"""The hf backend's log-likelihoods against a plain per-request forward pass.

The reference here is deliberately naive: one unpadded forward over
``context + continuation`` per request, token split by lm-eval's rule written out
again below. In fp32 the backend (batched, left-padded, single-token choices sharing
a row) must agree with it to 1e-4, and batched with one-request-at-a-time results to
1e-5 -- relative for sums larger than 1 nat: measured on SmolLM2 fp32 CPU, different
batch shapes and attention masks move a log-prob by up to ~2e-5 nats absolute (~3e-6
relative), pure rounding. That it is rounding and not a batching bug is shown by the
fp64 test, where batched and unbatched agree to 1e-5 absolute. Rolling log-likelihoods are
checked against one forward over the whole text and an explicit window-by-window
computation. Uses the embedded SmolLM2 (slow).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shared.spec import RunSpec
from shared.tasks import TASKS, load_samples

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from gpu_worker.backends import create_backend

    spec = RunSpec(tasks=("arc_easy",), precision="fp32", device="cpu")
    return create_backend(spec)


def lm_eval_split(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's _encode_pair: trailing context spaces go to the continuation; encode the
    pair together and cut after the context's own token count; empty context -> prefix."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        prefix = tokenizer.bos_token_id
        if prefix is None:
            prefix = tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[: len(context_ids)], whole[len(context_ids) :]


def token_logprobs(model, ids: list[int]):
    """log P(ids[i+1] | ids[:i+1]) for every i, and whether each target was the argmax."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[1:])
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)
    return picked.tolist(), (log_probs.argmax(-1) == targets).tolist()


def reference(backend, context: str, continuation: str) -> tuple[float, bool, int]:
    context_ids, cont_ids = lm_eval_split(backend.tokenizer, context, continuation)
    picked, greedy = token_logprobs(backend.model, context_ids + cont_ids)
    n = len(cont_ids)
    return sum(picked[-n:]), all(greedy[-n:]), n


# Single-token choices (tinymmlu, sst2), multi-token (arc, piqa, hellaswag), and
# per-choice contexts (winogrande); tinyMMLU prompts are ~700 tokens, so one item.
ITEMS = {"tinymmlu": 1, "arc_easy": 2, "winogrande": 2, "piqa": 2, "hellaswag": 2, "sst2": 2}


def requests_from_tasks(skip: tuple[str, ...] = ()):
    from gpu_worker.backends import LoglikelihoodRequest

    if not (DATA / "mc").is_dir():
        pytest.skip(f"shared data folder {DATA} not present")
    requests = []
    for task, count in ITEMS.items():
        if task in skip:
            continue
        for sample in load_samples(TASKS[task], DATA, count):
            contexts = sample.contexts or (sample.prompt,) * len(sample.choices)
            requests += [
                LoglikelihoodRequest(c, choice)
                for c, choice in zip(contexts, sample.choices, strict=True)
            ]
    return requests


def test_batched_equals_unbatched_and_plain_forward(backend):
    requests = requests_from_tasks()
    batched = backend.loglikelihood(requests)
    assert len(batched) == len(requests)
    for request, got in zip(requests, batched, strict=True):
        assert got.error is None
        alone = backend.loglikelihood([request])[0]
        assert got.logprob == pytest.approx(alone.logprob, rel=1e-5, abs=1e-5)
        assert got.is_greedy == alone.is_greedy
        logprob, greedy, n_tokens = reference(backend, request.context, request.continuation)
        assert got.logprob == pytest.approx(logprob, abs=1e-4), request
        assert got.is_greedy == greedy, request
        assert got.continuation_tokens == n_tokens


def test_batched_equals_unbatched_to_1e5_in_fp64(backend):
    # Same model in float64: padding, position ids, logits_to_keep and shared rows
    # must then give the one-at-a-time numbers to 1e-5 absolute. (Not bit-exact: the
    # backend takes log_softmax in fp32, and logits a hair apart can round to
    # neighbouring fp32 values, ~2e-6 nats per token.)
    import torch

    requests = requests_from_tasks(skip=("tinymmlu",))  # fp64 on ~700 tokens is slow
    backend.model.to(torch.float64)
    try:
        batched = backend.loglikelihood(requests)
        alone = [backend.loglikelihood([r])[0] for r in requests]
    finally:
        backend.model.to(torch.float32)  # fp32 -> fp64 -> fp32 is lossless
    for got, one in zip(batched, alone, strict=True):
        assert got.logprob == pytest.approx(one.logprob, abs=1e-5)
        assert got.is_greedy == one.is_greedy


def test_single_token_choices_are_one_token_each(backend):
    # " A" is one token (the space is folded in); "A" after "Answer:" is another.
    tokenizer = backend.tokenizer
    assert len(tokenizer(" A", add_special_tokens=False)["input_ids"]) == 1
    from gpu_worker.backends import LoglikelihoodRequest

    results = backend.loglikelihood(
        [LoglikelihoodRequest("Question: 2+2=?\nAnswer:", f" {c}") for c in "ABCD"]
    )
    assert [r.continuation_tokens for r in results] == [1, 1, 1, 1]
    assert sum(r.is_greedy for r in results) <= 1


def test_trailing_context_space_moves_to_the_continuation(backend):
    from gpu_worker.backends import LoglikelihoodRequest

    spaced, plain = backend.loglikelihood(
        [
            LoglikelihoodRequest("The capital of France is ", "Paris"),
            LoglikelihoodRequest("The capital of France is", " Paris"),
        ]
    )
    assert spaced.logprob == pytest.approx(plain.logprob, abs=1e-5)
    assert spaced.continuation_tokens == plain.continuation_tokens


def test_is_greedy_on_a_certain_continuation(backend):
    from gpu_worker.backends import LoglikelihoodRequest

    text = "one two three four five six seven eight nine ten"
    context, continuation = text[:-4], text[-4:]  # " ten"
    (result,) = backend.loglikelihood([LoglikelihoodRequest(context, continuation)])
    logprob, greedy, _ = reference(backend, context, continuation)
    assert result.is_greedy == greedy
    assert result.logprob == pytest.approx(logprob, abs=1e-4)


TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor "
    "jugs. How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.\n"
)


def prefix_token(tokenizer) -> int:
    # lm-eval's HFLM.prefix_token_id: BOS when the tokenizer has one, else EOS.
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def test_rolling_short_text_equals_one_direct_forward(backend):
    from gpu_worker.backends import RollingRequest

    tokens = backend.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    picked, _ = token_logprobs(backend.model, [prefix_token(backend.tokenizer), *tokens])
    (result,) = backend.loglikelihood_rolling([RollingRequest(TEXT)])
    assert result.error is None
    assert result.tokens == len(tokens)
    assert result.logprob == pytest.approx(sum(picked), abs=1e-4)
    # Perplexity of a known text, computed directly: exp(mean negative log-prob).
    from cpu_scorer.perplexity import aggregate

    summary = aggregate(
        [{"logprob": result.logprob, "tokens": result.tokens, "words": 1, "bytes": 1}]
    )
    assert summary["token_perplexity"] == pytest.approx(math.exp(-sum(picked) / len(tokens)))


@pytest.mark.parametrize(("window", "stride"), [(16, None), (16, 8), (16, 5), (7, 7)])
def test_rolling_windows_score_every_token_once_with_the_overlap_as_context(
    backend, window, stride
):
    from gpu_worker.backends import RollingRequest

    tokens = backend.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    n = len(tokens)
    assert n > 2 * window
    sequence = [prefix_token(backend.tokenizer), *tokens]
    step = stride or window
    # Window ends (in target positions 1..n): window, window+step, ..., capped at n.
    ends = list(range(window, n, step)) + [n]
    expected, done = 0.0, 0
    for end in ends:
        picked, _ = token_logprobs(backend.model, sequence[max(0, end - window) : end + 1])
        expected += sum(picked[-(end - done) :])
        done = end
    (result,) = backend.loglikelihood_rolling([RollingRequest(TEXT, window, stride)])
    assert result.tokens == n
    assert result.logprob == pytest.approx(expected, abs=1e-4)


def test_fewshot_items_share_their_block_and_keep_their_numbers(backend):
    """Four MMLU questions of one subject behind the same 5-shot block (~600 tokens):
    the block runs once (all 16 requests in one packed row), and every log-likelihood
    equals the plain forward's, as without sharing."""
    from gpu_worker.backends import LoglikelihoodRequest

    # MMLU's limit counts per subject (as lm-eval's --limit does): the first subject's 4.
    samples = load_samples(TASKS["mmlu"], DATA, 4, num_fewshot=5)[:4]
    assert len({s.doc["subject"] for s in samples}) == 1
    requests = [LoglikelihoodRequest(s.prompt, c) for s in samples for c in s.choices]
    results = backend.loglikelihood(requests)
    assert {r.batch_size for r in results} == {len(requests)}  # one row, one forward
    for request, got in zip(requests, results, strict=True):
        logprob, greedy, _ = reference(backend, request.context, request.continuation)
        assert got.logprob == pytest.approx(logprob, rel=1e-4, abs=1e-4)
        assert got.is_greedy == greedy
