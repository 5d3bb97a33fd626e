"""Backends: one module per engine behind one interface.

Each factory imports its heavy library only when chosen, so a machine without vLLM
can still run the hf backend, and a missing extra fails only when that backend is
picked, naming the install command. What a backend can do (precisions, adapters) is
declared here, and why it refuses a precision on a platform in its own module's
``refusal(precision, platform)``: both are known without importing any engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from gpu_worker.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
)
from shared.errors import TandemError, unknown_name
from shared.spec import RunSpec

if TYPE_CHECKING:
    from gpu_worker.precision import Platform

ALL_PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: where it lives and what it can run."""

    module: str  # defines create(spec) and refusal(precision, platform)
    extra: str  # the tandem-eval extra that installs its engine
    # Concrete precisions it can run somewhere; () when the model file fixes it (GGUF).
    precisions: tuple[str, ...]
    adapters: bool  # takes a LoRA adapter
    merge: bool  # can merge the adapter into the weights (merge_adapter = true)


# One line per backend. shared.spec.BackendName must list the same names (a test checks).
BACKENDS: dict[str, BackendEntry] = {
    "hf": BackendEntry("gpu_worker.backends.hf", "worker", ALL_PRECISIONS, True, True),
    "vllm": BackendEntry("gpu_worker.backends.vllm", "vllm", ALL_PRECISIONS, True, True),
    "unsloth": BackendEntry(
        "gpu_worker.backends.unsloth", "unsloth", ("bf16", "fp16", "int8", "nf4"), True, True
    ),
    # Runs the .gguf's own quantized weights as they ship: no precision to choose
    # (precision = "auto"), so it declares none.
    "llamacpp": BackendEntry("gpu_worker.backends.llamacpp", "llamacpp", (), False, False),
    # Accepts every precision and adapter and runs none: tests only.
    "fake": BackendEntry("gpu_worker.backends.fake", "worker", ALL_PRECISIONS, False, False),
}

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendEntry",
    "GenerationRequest",
    "GenerationResult",
    "LoglikelihoodRequest",
    "LoglikelihoodResult",
    "RollingRequest",
    "RollingResult",
    "backend_refusal",
    "create_backend",
]


def _module(name: str) -> ModuleType:
    entry = BACKENDS[name]
    try:
        return importlib.import_module(entry.module)
    except ImportError as error:
        raise TandemError(
            f"backend {name!r} needs the {entry.extra!r} extra: "
            f"pip install 'tandem-eval[{entry.extra}]' ({error})"
        ) from error


def backend_refusal(name: str) -> Callable[[str, Platform], str | None]:
    """The backend's own ``refusal(precision, platform)``; importing its module loads
    no engine."""
    if name not in BACKENDS:
        raise unknown_name("backend", name, BACKENDS)
    return _module(name).refusal


def create_backend(spec: RunSpec) -> Backend:
    """Build the backend the spec names; errors name the missing extra."""
    if spec.backend not in BACKENDS:
        raise unknown_name("backend", spec.backend, BACKENDS)
    entry = BACKENDS[spec.backend]
    if spec.adapter and not entry.adapters:
        takes = sorted(name for name, e in BACKENDS.items() if e.adapters)
        raise TandemError(
            f"backend {spec.backend!r} takes no LoRA adapter; backends that do: {', '.join(takes)}"
        )
    if spec.merge_adapter and not entry.merge:
        raise TandemError(f"backend {spec.backend!r} cannot merge an adapter (merge_adapter)")
    factory: Callable[[RunSpec], Backend] = _module(spec.backend).create
    return factory(spec)
