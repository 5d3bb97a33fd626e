"""``tandem profile SPEC``: how fast the spec's model runs here, stored with its run.

Measures, with the spec's backend, precision and device:

- **latency** at batch 1 for prompts of 128 and 512 tokens: seconds per request of
  ``new_tokens`` greedy tokens, mean / p50 / p95 over ``repeats`` requests after
  ``warmup`` requests that are not counted (the first calls pay for kernel selection,
  allocator growth and caches);
- **throughput** at the backend's own batch size: ``requests`` prompts of 128 tokens
  submitted at once (the spec's batch size when it is a number, else 64, and the
  backend batches them as it would a shard): generated tokens per second;
- **peak memory**: the process's peak RSS and, on a GPU, the peak CUDA allocation.

The result is ``runs/<run_id>/profile.json`` (``shared.records.ProfileRecord``), shown
by ``tandem report`` and the run view. Prompts are plain filler text rendered without a
chat template, sized by asking the backend how many tokens they came to, so any backend
works, the fake one included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from gpu_worker.backends.base import Backend, GenerationRequest
from gpu_worker.environment import utc_now
from gpu_worker.job import worker_info
from gpu_worker.telemetry import peak_rss_bytes
from shared.errors import TandemError
from shared.records import Latency, ProfileRecord, Throughput
from shared.spec import RunSpec
from shared.store import Store

PROMPT_LENGTHS = (128, 512)
THROUGHPUT_PROMPT = 128
# Ordinary English words: about one token each for the usual BPE vocabularies.
_FILLER = (
    "the river ran past an old mill where children played near tall green trees "
    "while people walked slowly along a quiet road towards the small town market"
).split()


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's
    default), so p50 of an even count is the mean of the middle two."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _text(words: int) -> str:
    return " ".join(_FILLER[i % len(_FILLER)] for i in range(words))


def prompt_of(backend: Backend, tokens: int) -> tuple[str, int]:
    """A prompt the backend counts as ``tokens`` tokens (or as close as it gets in a few
    tries), and the count it gives."""

    def measure(words: int) -> tuple[str, int]:
        text = _text(words)
        return text, backend.generate([GenerationRequest(text, 1)])[0].prompt_tokens

    words = tokens
    best = measure(words)
    for _ in range(5):
        measured = best[1]
        if measured == tokens or measured <= 0:
            break
        gap = tokens - measured
        # Far off: scale by the tokens-per-word ratio; close: step by the difference.
        words = max(1, words + gap if abs(gap) < 8 else round(words * tokens / measured))
        tried = measure(words)
        if abs(tried[1] - tokens) >= abs(measured - tokens):
            break
        best = tried
    return best


def _latency(backend: Backend, tokens: int, new_tokens: int, warmup: int, repeats: int) -> Latency:
    text, measured = prompt_of(backend, tokens)
    request = GenerationRequest(text, new_tokens)
    for _ in range(warmup):
        backend.generate([request])
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend.generate([request])
        seconds.append(time.perf_counter() - started)
    return Latency(
        prompt_tokens=tokens,
        measured_prompt_tokens=measured,
        new_tokens=new_tokens,
        repeats=repeats,
        mean_seconds=sum(seconds) / len(seconds),
        p50_seconds=quantile(seconds, 0.5),
        p95_seconds=quantile(seconds, 0.95),
    )


def _throughput(backend: Backend, requests: int, new_tokens: int) -> Throughput:
    text, measured = prompt_of(backend, THROUGHPUT_PROMPT)
    batch = [GenerationRequest(text, new_tokens) for _ in range(requests)]
    backend.generate(batch[: min(len(batch), 2)])  # warm-up at a small batch
    started = time.perf_counter()
    results = backend.generate(batch)
    seconds = time.perf_counter() - started
    generated = sum(r.generated_tokens for r in results)
    return Throughput(
        requests=requests,
        batch_size=max(r.batch_size for r in results),
        prompt_tokens=measured,
        new_tokens=new_tokens,
        generated_tokens=generated,
        seconds=seconds,
        tokens_per_second=generated / seconds if seconds else None,
        requests_per_second=requests / seconds if seconds else None,
    )


def profile_backend(
    backend: Backend,
    spec: RunSpec,
    run_id: str,
    *,
    new_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 10,
    requests: int | None = None,
) -> ProfileRecord:
    """Profile a loaded backend (see the module docstring)."""
    if repeats < 1 or warmup < 0 or new_tokens < 1:
        raise TandemError("profile needs repeats >= 1, warmup >= 0 and new_tokens >= 1")
    batch = spec.generation.batch_size
    requests = requests or (batch if isinstance(batch, int) else 64)
    take: Any = getattr(backend, "take_telemetry", None)
    if callable(take):
        take()  # the GPU's peak from here on
    latency = [_latency(backend, n, new_tokens, warmup, repeats) for n in PROMPT_LENGTHS]
    throughput = _throughput(backend, requests, new_tokens)
    counters = take() if callable(take) else {}
    return ProfileRecord(
        run_id=run_id,
        created_at=utc_now(),
        spec_hash=spec.spec_hash(),
        worker=worker_info(backend),
        warmup=warmup,
        latency=latency,
        throughput=throughput,
        peak_rss_bytes=peak_rss_bytes(),
        cuda_max_allocated_bytes=counters.get("cuda_max_allocated_bytes"),
    )


def run_profile(
    spec: RunSpec,
    store_uri: str,
    *,
    new_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 10,
    requests: int | None = None,
) -> ProfileRecord:
    """Load the spec's backend, profile it and store ``profile.json`` under its run."""
    from gpu_worker.backends import create_backend

    store = Store(store_uri)
    store.check(writable=True, create=True)
    run_id = spec.resolved_run_id()
    backend = create_backend(spec)
    record = profile_backend(
        backend,
        spec,
        run_id,
        new_tokens=new_tokens,
        warmup=warmup,
        repeats=repeats,
        requests=requests,
    )
    store.publish_profile(record)
    return record
