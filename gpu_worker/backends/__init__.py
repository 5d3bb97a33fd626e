"""Backends: one module per engine behind one interface.

Each factory imports its heavy library only when chosen, so a machine without vLLM
can still run the hf backend, and a missing extra fails only when that backend is
picked, naming the install command.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

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

# name -> (module, extra that provides it). One line per backend.
BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("gpu_worker.backends.hf", "worker"),
    "vllm": ("gpu_worker.backends.vllm", "vllm"),
    "unsloth": ("gpu_worker.backends.unsloth", "unsloth"),
    "fake": ("gpu_worker.backends.fake", "worker"),
}

__all__ = [
    "BACKENDS",
    "Backend",
    "GenerationRequest",
    "GenerationResult",
    "LoglikelihoodRequest",
    "LoglikelihoodResult",
    "RollingRequest",
    "RollingResult",
    "create_backend",
]


def create_backend(spec: RunSpec) -> Backend:
    """Build the backend the spec names; errors name the missing extra."""
    if spec.backend not in BACKENDS:
        raise unknown_name("backend", spec.backend, BACKENDS)
    module_name, extra = BACKENDS[spec.backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TandemError(
            f"backend {spec.backend!r} needs the {extra!r} extra: "
            f"pip install 'tandem-eval[{extra}]' ({error})"
        ) from error
    factory: Callable[[RunSpec], Backend] = module.create
    return factory(spec)
