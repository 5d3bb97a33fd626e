"""A deterministic fake engine for tests: no torch, no model, same contract.

Responses and log-probs are pure functions of the request text, so tests can check
resume, sharding and scoring without loading weights. Select with backend = "fake".

``engine_kwargs = { seconds_per_request = 0.5 }`` makes each call sleep that long per
request: a shard then takes long enough to kill its worker mid-job, or to measure
scheduling (bench/ray_bench.py) without any model.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from gpu_worker.backends.base import (
    BackendInfo,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
)
from gpu_worker.hardware import device_name, host_name
from gpu_worker.precision import Platform
from shared.errors import TandemError
from shared.spec import RunSpec

_WORDS = "the model answers every question with these few plain words only".split()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def refusal(precision: str, platform: Platform) -> str | None:
    """The fake runs anywhere: it computes nothing in any precision."""
    return None


class FakeBackend:
    name = "fake"

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.calls: list[tuple[str, int]] = []
        self._batch_sizes: list[int] = []
        self.seconds_per_request = _seconds_per_request(spec.engine_kwargs)

    def _work(self, kind: str, count: int) -> None:
        self.calls.append((kind, count))
        self._batch_sizes.append(count)
        if self.seconds_per_request:
            time.sleep(self.seconds_per_request * count)

    def take_telemetry(self) -> dict[str, Any]:
        """Batch sizes since the last call; the fake computes nothing, so no phase takes
        any time (a real backend splits its seconds into prefill and decode)."""
        sizes, self._batch_sizes = self._batch_sizes, []
        return {"prefill_seconds": 0.0, "decode_seconds": 0.0, "batch_sizes": sizes}

    def has_chat_template(self) -> bool:
        return True

    def render(self, prompt: str, chat: bool) -> str:
        return f"<|user|>{prompt}<|assistant|>" if chat else prompt

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self._work("generate", len(requests))
        results = []
        for request in requests:
            digest = _digest(request.prompt)
            count = min(request.max_new_tokens, 4 + digest[0] % 12)
            words = [_WORDS[b % len(_WORDS)] for b in digest[1 : 1 + count]]
            text = " ".join(words)
            finish = "length" if count == request.max_new_tokens else "eos"
            for stop in request.stop:
                if stop in text:
                    text, finish = text[: text.index(stop)], "stop"
            results.append(
                GenerationResult(
                    text=text,
                    prompt_tokens=len(request.prompt.split()),
                    generated_tokens=count,
                    finish_reason=finish,
                    batch_size=len(requests),
                )
            )
        return results

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        self._work("loglikelihood", len(requests))
        results = []
        for request in requests:
            digest = _digest(request.context + "\x00" + request.continuation)
            logprob = -(int.from_bytes(digest[:4], "big") / 2**32) * 10.0
            results.append(
                LoglikelihoodResult(
                    logprob=logprob,
                    is_greedy=digest[4] < 64,
                    continuation_tokens=max(1, len(request.continuation.split())),
                    context_tokens=len(request.context.split()),
                    batch_size=len(requests),
                )
            )
        return results

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[RollingResult]:
        self._work("rolling", len(requests))
        return [
            RollingResult(logprob=-2.0 * len(r.text.split()), tokens=max(1, len(r.text.split())))
            for r in requests
        ]

    def info(self) -> dict[str, Any]:
        return BackendInfo(
            model_id=self.spec.model,
            chat_template_sha256=hashlib.sha256(b"fake").hexdigest(),
            precision="fp32",
            device="cpu",
            backend=self.name,
            engine="fake",
            dtype="none",
            device_name=device_name("cpu"),
            host=host_name(),
            batch_size=str(self.spec.generation.batch_size),
        ).as_dict()


def _seconds_per_request(engine_kwargs: dict[str, Any]) -> float:
    unknown = sorted(set(engine_kwargs) - {"seconds_per_request"})
    if unknown:
        raise TandemError(
            f"engine_kwargs {unknown[0]!r} is not a fake-backend setting; "
            "it takes only seconds_per_request (a number >= 0)"
        )
    value = engine_kwargs.get("seconds_per_request", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TandemError(f"engine_kwargs seconds_per_request must be a number >= 0, got {value!r}")
    return float(value)


def create(spec: RunSpec) -> FakeBackend:
    return FakeBackend(spec)
