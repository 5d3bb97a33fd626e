"""The backend registry: the same names as the spec, declared capabilities within the
spec's precisions, refusals that load no engine."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from gpu_worker.backends import BACKENDS, backend_refusal
from shared.errors import TandemError
from shared.spec import BackendName, Precision


def test_registry_and_spec_name_the_same_backends() -> None:
    assert set(get_args(BackendName)) == set(BACKENDS)


def test_declared_precisions_are_spec_precisions() -> None:
    for name, entry in BACKENDS.items():
        assert set(entry.precisions) <= set(get_args(Precision)) - {"auto"}, name


def test_a_backend_declaring_no_precision_refuses_every_one() -> None:
    # llamacpp: the .gguf fixes the weights' precision; only "auto" runs, and every
    # concrete precision is refused with the reason.
    from gpu_worker.precision import Platform, refusal

    fixed = [name for name, entry in BACKENDS.items() if not entry.precisions]
    assert fixed == ["llamacpp"]
    for precision in set(get_args(Precision)) - {"auto"}:
        assert "auto" in (refusal("llamacpp", precision, Platform("cpu")) or "")


def test_unknown_backend_names_the_valid_ones() -> None:
    with pytest.raises(TandemError, match="hf"):
        backend_refusal("hff")


def test_refusals_load_no_engine() -> None:
    # A fresh process: every backend's refusal is asked on a CPU and on a GPU platform
    # without importing torch, transformers, vllm or unsloth.
    code = """
import sys
from gpu_worker.backends import BACKENDS
from gpu_worker.precision import Platform, refusal
for platform in (Platform("cpu"), Platform("cuda", (8, 0), nvidia=True, bitsandbytes=(0, 50))):
    for name in BACKENDS:
        for precision in ("fp32", "bf16", "fp16", "int8", "nf4"):
            refusal(name, precision, platform)
print(sorted(m for m in ("torch", "transformers", "vllm", "unsloth") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
