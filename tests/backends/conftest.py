"""Shared fixtures for the backend conformance suite.

Backends are expensive to build (a model load each), so every configuration is built
once per module and reused by all its tests; the hf fp32 reference is built once per
session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from gpu_worker.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def lora_dir(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA for the embedded model, named after its hub id (as an adapter
    trained on the hub model would be)."""
    from _support import make_lora

    out = tmp_path_factory.mktemp("lora") / "smollm2-lora"
    return make_lora(embedded_dir, out, "HuggingFaceTB/SmolLM2-135M-Instruct")
