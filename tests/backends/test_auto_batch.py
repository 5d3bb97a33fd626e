"""Auto batch size: probe the worst-case shape, halve on out-of-memory, never drop a
batch. A stand-in model that "runs out of memory" above a size; no weights load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from gpu_worker.backends._hf_decode import GreedyDecoder  # noqa: E402
from gpu_worker.backends.base import GenerationResult  # noqa: E402


class OOMModel:
    """Raises like CUDA does when rows x tokens exceeds ``capacity``."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, input_ids, **kwargs):
        self.shapes.append(tuple(input_ids.shape))
        if input_ids.shape[0] * input_ids.shape[1] > self.capacity:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace()


def bare_decoder(batch_size="auto", model=None) -> GreedyDecoder:
    """The hf backend's decoder around a stand-in model and tokenizer."""
    return GreedyDecoder(
        model,
        SimpleNamespace(pad_token_id=0),
        device="cpu",  # the stand-in model runs anywhere
        precision="fp32",
        eos_ids=set(),
        max_length=8192,
        batch_size=batch_size,
    )


def echoed(items) -> list[GenerationResult]:
    """A stand-in decoder's results: each item's first token id as its text."""
    return [
        GenerationResult(
            text=str(ids[0]),
            prompt_tokens=len(ids),
            generated_tokens=0,
            finish_reason="length",
            truncated_tokens=cut,
        )
        for ids, cut in items
    ]


def test_probe_halves_at_the_full_length_and_caches() -> None:
    backend = bare_decoder(model=OOMModel(capacity=16 * 512))
    # 300 prompt + max_new tokens: probed at the 512-token bucket, 64 -> 32 -> 16 -> ok.
    assert backend._probe_batch_size(64, 300) == 16
    assert [rows for rows, _ in backend.model.shapes] == [64, 32, 16]
    assert all(tokens == 512 for _, tokens in backend.model.shapes)
    # A longer generation (same prompt, more new tokens) gets its own, smaller size.
    assert backend._probe_batch_size(64, 1000) == 8  # 1024-token bucket
    calls = len(backend.model.shapes)
    assert backend._probe_batch_size(64, 290) == 16  # same bucket: no new probe
    assert len(backend.model.shapes) == calls


def test_probe_reraises_errors_that_are_not_oom() -> None:
    def broken(input_ids, **kwargs):
        raise RuntimeError("shape mismatch")

    backend = bare_decoder(model=broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        backend._probe_batch_size(8, 100)


def test_fixed_batch_size_is_used_as_given() -> None:
    backend = bare_decoder(batch_size=3)
    assert backend._generation_batch_size(10_000) == 3


def test_oom_halves_and_retries_the_same_items_in_order() -> None:
    backend = bare_decoder()
    seen: list[int] = []

    def padded(items, max_new, stop, declared=0):
        seen.append(len(items))
        if len(items) > 2:
            raise RuntimeError("CUDA out of memory")
        return echoed(items)

    backend._generate_padded = padded
    items = [([i], 0) for i in range(7)]
    results = backend._generate_batch(items, 4, ())
    assert [r.text for r in results] == [str(i) for i in range(7)]  # none dropped
    assert seen == [7, 3, 1, 2, 4, 2, 2]  # 7 -> 3 + 4 -> (1 + 2) + (2 + 2)


def test_a_stream_out_of_memory_runs_batches_instead() -> None:
    backend = bare_decoder(batch_size=2)
    backend.loop_supported = True
    calls: list[tuple[int, int | None]] = []

    def decode(items, max_new, stop, declared=0, slots=None):
        calls.append((len(items), slots))
        if slots is not None:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return echoed(items)

    backend._decode_greedy = decode
    items = [([9 - i] * (9 - i), 0) for i in range(5)]  # longest first, as generate sorts
    results = backend._generate_group(items, 2, 4, (), 0)
    assert [r.text for r in results] == [str(9 - i) for i in range(5)]
    assert calls == [(5, 2), (2, None), (2, None), (1, None)]
    assert backend.batch_sizes == [2, 2, 1]


def test_other_errors_in_a_stream_are_not_swallowed() -> None:
    backend = bare_decoder(batch_size=2)
    backend.loop_supported = True

    def decode(items, max_new, stop, declared=0, slots=None):
        raise RuntimeError("shape mismatch")

    backend._decode_greedy = decode
    with pytest.raises(RuntimeError, match="shape mismatch"):
        backend._generate_group([([1], 0)] * 3, 2, 4, (), 0)
