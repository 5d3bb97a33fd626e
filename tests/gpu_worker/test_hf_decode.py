"""The hf backend's own greedy loop (GreedyDecoder._decode_greedy) against transformers'
generate, on the embedded SmolLM2 (fp32, CPU): token for token, with early EOS, stop strings,
rows leaving the batch while others go on, and waiting prompts taking their slots."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

PROMPTS = [
    "Answer with one word: what colour is the sky on a clear day?",
    "Write a short paragraph about the history of the bicycle, with at least three dates.",
    "What is 7 times 6? Reply with the number only.",
    "List five fruits, one per line.",
    "Say yes.",
    "Explain in detail how a refrigerator keeps food cold, step by step.",
]


def _items(backend, prompts):
    items = [(backend.encode(backend.render(p, True)), 0) for p in prompts]
    return sorted(items, key=lambda item: -len(item[0]))  # as generate() batches them


def _key(result):
    return (result.text, result.generated_tokens, result.finish_reason, result.prompt_tokens)


def test_loop_equals_generate_with_early_eos(embedded_backend):
    backend = embedded_backend
    decoder = backend.decoder
    items = _items(backend, PROMPTS)
    assert decoder._shared_prefix(items) > 0  # the chat template's system prompt
    loop = decoder._decode_greedy(items, 48, ())
    assert loop is not None, "the embedded model should run the custom loop"
    reference = decoder._generate_with_generate(items, 48, ())
    assert [_key(r) for r in loop] == [_key(r) for r in reference]
    reasons = {r.finish_reason for r in loop}
    assert reasons == {"eos", "length"}, reasons  # rows left the batch while others ran on
    # One at a time through generate: batching and rows dropping out change nothing.
    for item, together in zip(items, loop, strict=True):
        alone = decoder._generate_with_generate([item], 48, ())[0]
        assert _key(alone) == _key(together)


def test_loop_equals_generate_with_stop_strings(embedded_backend):
    backend = embedded_backend
    decoder = backend.decoder
    items = _items(backend, PROMPTS)
    full = decoder._decode_greedy(items, 40, ())
    long_texts = [r.text for r in full if len(r.text.split()) > 4]
    assert len(long_texts) >= 2
    # Strings the unconstrained outputs are known to contain, plus one never produced.
    stop = (long_texts[0].split()[3], long_texts[1].split()[2], "@@never@@")
    loop = decoder._decode_greedy(items, 40, stop)
    reference = decoder._generate_with_generate(items, 40, stop)
    assert [_key(r) for r in loop] == [_key(r) for r in reference]
    assert sum(r.finish_reason == "stop" for r in loop) >= 2
    for before, after in zip(full, loop, strict=True):
        if after.finish_reason == "stop":
            cut = min(before.text.index(s) for s in stop if s in before.text)
            assert after.text == before.text[:cut]
            assert after.generated_tokens <= before.generated_tokens


def test_rows_leaving_the_batch_do_not_change_the_others(embedded_backend, monkeypatch):
    """A short prompt that ends at once next to long ones: the cache is compacted (and
    its shared left padding dropped) mid-batch; a tiny growth step makes the in-place
    cache reallocate several times."""
    from gpu_worker.backends import _hf_stream

    monkeypatch.setattr(_hf_stream, "CACHE_GROWTH", 3)
    backend = embedded_backend
    decoder = backend.decoder
    long_prompt = "Summarise this: " + "the cat sat on the mat and looked at the birds. " * 6
    prompts = [long_prompt + " Reply with the word done only.", *PROMPTS[1:4]]
    items = _items(backend, prompts)
    together = decoder._decode_greedy(items, 32, ())
    for item, result in zip(items, together, strict=True):
        alone = decoder._decode_greedy([item], 32, ())[0]
        assert _key(alone) == _key(result)
    assert min(r.generated_tokens for r in together) < 32


def test_a_stream_refills_the_slots_of_rows_that_end(embedded_backend, monkeypatch):
    """Six prompts through two slots: a waiting prompt joins as soon as a row ends
    (prefilled beside rows already decoding), and every text is the one that prompt
    gets alone through generate, and the one it gets with all six in one batch."""
    from gpu_worker.backends import _hf_stream

    monkeypatch.setattr(_hf_stream, "CACHE_GROWTH", 5)  # the cache reallocates often
    backend = embedded_backend
    decoder = backend.decoder
    items = _items(backend, PROMPTS)
    joins: list[tuple[int, int]] = []  # (prompts, free columns asked for) per prefill
    prefill = decoder.prefill

    def counting(batch, shared, room, rows=0, prefix=None):
        joins.append((len(batch), room))
        return prefill(batch, shared, room, rows, prefix)

    monkeypatch.setattr(decoder, "prefill", counting)
    streamed = decoder._decode_greedy(items, 40, (), slots=2)
    assert streamed is not None
    assert joins[0] == (2, 5) and len(joins) >= 3
    assert any(room == 0 for _, room in joins)  # joined a cache that was decoding
    assert sum(count for count, _ in joins) == len(items)
    assert {r.finish_reason for r in streamed} == {"eos", "length"}
    assert {r.batch_size for r in streamed} == {2}
    together = decoder._decode_greedy(items, 40, ())
    assert [_key(r) for r in streamed] == [_key(r) for r in together]
    for item, result in zip(items, streamed, strict=True):
        alone = decoder._generate_with_generate([item], 40, ())[0]
        assert _key(alone) == _key(result)
    # Joins wait for a share of the slots (here 2 of 4) or for the last prompts.
    monkeypatch.setattr(_hf_stream, "JOIN_DIVISOR", 2)
    joins.clear()
    grouped = decoder._decode_greedy(items, 40, (), slots=4)
    assert joins[0] == (4, 5)
    assert all(count == 2 for count, room in joins[1:] if room == 0), joins
    assert [_key(r) for r in grouped] == [_key(r) for r in together]


def test_the_screened_head_changes_no_token(embedded_backend, monkeypatch):
    """Decoding steps through the bf16-screened LM head (forced on, whatever this CPU
    has) give the texts of the model's own fp32 head, streamed and batched."""
    monkeypatch.setattr("gpu_worker.precision.cpu_has_native_bf16", lambda: True)
    backend = embedded_backend
    decoder = backend.decoder
    items = _items(backend, PROMPTS)
    assert decoder.greedy_head() is not None
    screened = decoder._decode_greedy(items, 48, (), slots=4)
    monkeypatch.setattr(decoder, "screen", False)
    assert decoder.greedy_head() is None
    plain = decoder._decode_greedy(items, 48, (), slots=4)
    assert [_key(r) for r in screened] == [_key(r) for r in plain]


def test_a_stream_with_stop_strings_equals_batches(embedded_backend):
    backend = embedded_backend
    decoder = backend.decoder
    items = _items(backend, PROMPTS)
    full = decoder._decode_greedy(items, 32, ())
    words = [r.text.split() for r in full if len(r.text.split()) > 4]
    stop = (words[0][3], words[1][2], "@@never@@")
    streamed = decoder._decode_greedy(items, 32, stop, slots=3)
    batched = decoder._decode_greedy(items[:3], 32, stop) + decoder._decode_greedy(
        items[3:], 32, stop
    )
    assert [_key(r) for r in streamed] == [_key(r) for r in batched]
    assert sum(r.finish_reason == "stop" for r in streamed) >= 2


def test_generate_streams_requests_beyond_the_batch_size(embedded_backend, monkeypatch):
    from gpu_worker.backends import GenerationRequest

    backend = embedded_backend
    requests = [GenerationRequest(backend.render(p, True), 16) for p in PROMPTS]
    whole = backend.generate(requests)
    backend.take_telemetry()
    monkeypatch.setattr(backend.decoder, "batch_size", 4)
    streamed = backend.generate(requests)
    assert [_key(r) for r in streamed] == [_key(r) for r in whole]
    stats = backend.take_telemetry()
    assert stats["batch_sizes"] == [4]
    assert {r.batch_size for r in streamed} == {4}
    # Each row's share of the stream's time: over the rows, time x 1 / batch size sums
    # to the stream's time, which the scorer's model seconds count (shard_telemetry).
    total = sum(r.batch_seconds / r.batch_size for r in streamed)
    assert total == pytest.approx(stats["prefill_seconds"] + stats["decode_seconds"])


def test_a_stream_with_a_declared_block_runs_the_block_once(
    embedded_backend, data_dir, monkeypatch
):
    """MATH-500's 4-shot block shared by four problems through two slots: prompts
    that join reuse the block's keys and values from the live cache (one forward of
    the block in all), and every text is the one that problem gets alone; a stream
    of max_new 1 and 0 ends as the loop always did."""
    from gpu_worker.backends.base import GenerationRequest
    from shared.tasks import TASKS, load_samples

    backend = embedded_backend
    decoder = backend.decoder
    samples = load_samples(TASKS["math500"], data_dir, 4, num_fewshot=4)
    requests = [
        GenerationRequest(s.prompt, 24, ("Problem:",), prefix=s.shared_prefix) for s in samples
    ]
    block = len(backend.encode(samples[0].shared_prefix))
    model, shapes = decoder.model, []

    def recording(**named):
        shapes.append(tuple(named["input_ids"].shape))
        return model(**named)

    monkeypatch.setattr(decoder, "model", recording)
    monkeypatch.setattr(decoder, "batch_size", 2)
    streamed = backend.generate(requests)
    monkeypatch.setattr(decoder, "model", model)
    blocks = [shape for shape in shapes if shape[0] == 1 and block - 2 <= shape[1] <= block]
    assert len(blocks) == 1, shapes  # the block ran once, though prompts joined later
    assert sum(1 for shape in shapes if shape[1] > 1) >= 3  # block, first pair, a join
    alone = [backend.generate([request])[0] for request in requests]
    assert [_key(r) for r in streamed] == [_key(r) for r in alone]
    items = _items(backend, PROMPTS)
    one = decoder._decode_greedy(items, 1, (), slots=2)
    assert [r.generated_tokens for r in one] == [1] * len(items)
    none = decoder._decode_greedy(items, 0, (), slots=2)
    assert [(r.text, r.generated_tokens, r.finish_reason) for r in none] == [
        ("", 0, "length")
    ] * len(items)


def test_generate_uses_the_loop_and_falls_back(embedded_backend):
    from gpu_worker.backends import GenerationRequest

    backend = embedded_backend
    requests = [GenerationRequest(backend.render(p, True), 24) for p in PROMPTS[:3]]
    assert backend.decoder.loop_supported
    fast = backend.generate(requests)
    backend.decoder.loop_supported = False  # as for a model the loop cannot run
    try:
        slow = backend.generate(requests)
    finally:
        backend.decoder.loop_supported = True
    assert [_key(r) for r in fast] == [_key(r) for r in slow]


def test_telemetry_splits_prefill_from_decode(embedded_backend):
    from gpu_worker.backends.base import GenerationRequest, LoglikelihoodRequest

    backend = embedded_backend
    backend.take_telemetry()  # counters of earlier tests
    backend.generate([GenerationRequest(backend.render(p, True), 8) for p in PROMPTS[:3]])
    stats = backend.take_telemetry()
    assert stats["prefill_seconds"] > 0 and stats["decode_seconds"] > 0
    assert sum(stats["batch_sizes"]) == 3
    assert backend.take_telemetry()["batch_sizes"] == []  # taking resets
    backend.loglikelihood([LoglikelihoodRequest("The sky is", " blue")])
    stats = backend.take_telemetry()
    assert stats["prefill_seconds"] > 0 and stats["decode_seconds"] == 0


def test_a_declared_fewshot_block_is_prefilled_once_and_changes_no_token(
    embedded_backend, data_dir, monkeypatch
):
    """MATH-500's fixed 4-shot block (~700 tokens) is the same in front of every problem:
    with the block declared, a batch prefills it once; texts equal the unshared path's,
    and a request alone splits where it does in a batch."""
    from dataclasses import replace

    from gpu_worker.backends.base import GenerationRequest
    from shared.tasks import TASKS, load_samples

    backend = embedded_backend
    samples = load_samples(TASKS["math500"], data_dir, 4, num_fewshot=4)
    assert len({s.shared_prefix for s in samples}) == 1 and samples[0].shared_prefix
    stop = ("Problem:",)
    shared = [GenerationRequest(s.prompt, 24, stop, prefix=s.shared_prefix) for s in samples]
    plain = [replace(r, prefix="") for r in shared]

    splits: list[int] = []
    prefill = backend.decoder.prefill
    monkeypatch.setattr(
        backend.decoder,
        "prefill",
        lambda items, count, *rest, **named: (
            splits.append(count) or prefill(items, count, *rest, **named)
        ),
    )
    together = backend.generate(shared)
    block = len(backend.encode(samples[0].shared_prefix))
    assert splits and all(block - 2 <= count <= block for count in splits), (splits, block)
    splits.clear()
    unshared = backend.generate(plain)
    assert splits == [0] * len(splits)  # no chat template here: nothing shared before
    assert [_key(r) for r in together] == [_key(r) for r in unshared]
    assert any(r.generated_tokens > 4 for r in together)
    alone = [backend.generate([request])[0] for request in shared[:2]]
    assert [_key(r) for r in alone] == [_key(r) for r in together[:2]]
