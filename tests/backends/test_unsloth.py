"""unsloth is NVIDIA-only: anywhere else choosing it fails clearly, and only it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _support import cuda_available

from shared.errors import TandemError
from shared.spec import RunSpec


@pytest.mark.skipif(cuda_available(), reason="this checks the no-GPU refusal")
def test_refused_without_nvidia_gpu_before_importing_unsloth() -> None:
    # A fresh process: the refusal must come before `import unsloth` (whose own import
    # raises without a GPU) and must leave the other backends usable.
    code = """
import sys
from gpu_worker.backends import create_backend
from shared.errors import TandemError
from shared.spec import RunSpec
try:
    create_backend(RunSpec(tasks=("ifeval",), backend="unsloth", precision="nf4"))
except TandemError as error:
    print("REFUSED:", error)
print("UNSLOTH_IMPORTED:", "unsloth" in sys.modules)
fake = create_backend(RunSpec(tasks=("ifeval",), backend="fake"))
print("FAKE_OK:", fake.name)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "REFUSED: backend 'unsloth' runs only on NVIDIA GPUs" in result.stdout
    assert "use backend = 'hf'" in result.stdout
    assert "UNSLOTH_IMPORTED: False" in result.stdout
    assert "FAKE_OK: fake" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU")
def test_fp32_refused_on_gpu_too() -> None:
    from gpu_worker.backends import create_backend

    with pytest.raises(TandemError, match="16-bit or quantized"):
        create_backend(RunSpec(tasks=("ifeval",), backend="unsloth", precision="fp32"))
