"""The backend contract: lm-eval's three calls, one result per request, in order.

Requests are plain frozen dataclasses so they pickle cheaply to Ray actors. A backend
never raises for one bad request: it returns a result with ``error`` set, so one
poisoned prompt cannot sink a shard. Fatal problems (out of memory that halving the
batch cannot fix, a broken model) raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """``prompt`` is already rendered (chat template applied when wanted). ``prefix``,
    when set, is text inside ``prompt`` up to which other requests' prompts are the same
    (a first_n few-shot block): a backend may compute it once per batch; results must
    not change."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    prefix: str = ""


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    generated_tokens: int
    # "stop" (a stop string), "eos", "length" or "error".
    finish_reason: str
    truncated_tokens: int = 0
    batch_seconds: float = 0.0
    batch_size: int = 1
    error: str | None = None


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log P(continuation | context). The leading space belongs to the continuation."""

    context: str
    continuation: str


@dataclass
class LoglikelihoodResult:
    logprob: float
    is_greedy: bool
    continuation_tokens: int
    context_tokens: int = 0
    batch_seconds: float = 0.0
    batch_size: int = 1
    error: str | None = None


@dataclass(frozen=True)
class RollingRequest:
    """Log-likelihood of a whole text (perplexity), windowed if longer than the context."""

    text: str
    window: int | None = None
    stride: int | None = None


@dataclass
class RollingResult:
    logprob: float
    tokens: int
    batch_seconds: float = 0.0
    error: str | None = None


class Backend(Protocol):
    """What every engine provides. ``info`` feeds run.json and shard provenance."""

    name: str

    def render(self, prompt: str, chat: bool) -> str:
        """The exact text the model sees: the chat template (add_generation_prompt) or raw."""
        ...

    def has_chat_template(self) -> bool: ...

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[RollingResult]: ...

    def info(self) -> dict[str, Any]:
        """What the worker really runs: the keys of ``BackendInfo``, plus engine extras."""
        ...


@dataclass
class BackendInfo:
    """What backends fill in for ``info()``: the model, and what the worker resolved."""

    model_id: str
    model_revision: str = ""
    model_file_sha256: str = ""
    chat_template_sha256: str = ""
    precision: str = ""  # resolved: never "auto"
    device: str = ""  # "cpu" or "cuda"
    backend: str = ""  # the registry name
    engine: str = ""  # "transformers", "vllm", "unsloth", "fake"
    engine_version: str = ""
    dtype: str = ""  # "bfloat16", or "nf4 (bitsandbytes, compute float32)"
    device_name: str = ""  # the GPU's or the CPU's model name
    host: str = ""
    batch_size: str = ""  # the configured generation batch size: "16" or "auto"
    threads: int | None = None  # torch threads on CPU, None on a GPU
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_revision": self.model_revision,
            "model_file_sha256": self.model_file_sha256,
            "chat_template_sha256": self.chat_template_sha256,
            "precision": self.precision,
            "device": self.device,
            "backend": self.backend,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "dtype": self.dtype,
            "device_name": self.device_name,
            "host": self.host,
            "batch_size": self.batch_size,
            "threads": self.threads,
            **self.extra,
        }
