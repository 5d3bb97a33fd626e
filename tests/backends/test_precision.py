"""Which precision runs where: refused up front, with the reason (no model loads)."""

from __future__ import annotations

import logging

import pytest

from gpu_worker.precision import (
    Platform,
    default_precision,
    quiet_bitsandbytes,
    refusal,
    resolve_precision,
)
from shared.errors import TandemError

CPU = Platform("cpu", cpu_bf16=False, bitsandbytes=(0, 50))
CPU_BF16 = Platform("cpu", cpu_bf16=True, bitsandbytes=(0, 50))
T4 = Platform("cuda", (7, 5), nvidia=True, bitsandbytes=(0, 50))
A100 = Platform("cuda", (8, 0), nvidia=True, bitsandbytes=(0, 50))
H100 = Platform("cuda", (9, 0), nvidia=True, bitsandbytes=(0, 50))
ROCM = Platform("cuda", (9, 4), nvidia=False, bitsandbytes=None)

# (backend, platform, precision) -> runs? The documented matrix (docs/backends.md).
MATRIX = [
    ("hf", CPU, "fp32", True),
    ("hf", CPU, "bf16", True),
    ("hf", CPU, "fp16", True),
    ("hf", CPU, "int8", True),
    ("hf", CPU, "nf4", True),
    ("hf", Platform("cpu", bitsandbytes=None), "nf4", False),
    ("hf", Platform("cpu", bitsandbytes=(0, 44)), "int8", False),
    ("hf", T4, "bf16", False),
    ("hf", T4, "fp16", True),
    ("hf", A100, "bf16", True),
    ("hf", A100, "nf4", True),
    ("vllm", CPU, "fp32", True),
    ("vllm", CPU, "bf16", False),
    ("vllm", CPU_BF16, "bf16", True),
    ("vllm", CPU, "fp16", False),
    ("vllm", CPU, "int8", False),
    ("vllm", CPU, "nf4", False),
    ("vllm", T4, "int8", False),
    ("vllm", A100, "int8", True),
    ("vllm", H100, "bf16", True),
    ("unsloth", CPU, "bf16", False),
    ("unsloth", ROCM, "bf16", False),
    ("unsloth", A100, "fp32", False),
    ("unsloth", A100, "bf16", True),
    ("unsloth", T4, "fp16", True),
    ("unsloth", H100, "nf4", True),
]


@pytest.mark.parametrize(("backend", "platform", "precision", "runs"), MATRIX)
def test_matrix(backend: str, platform: Platform, precision: str, runs: bool) -> None:
    reason = refusal(backend, precision, platform)
    assert (reason is None) == runs, reason


def test_refusal_says_why_and_what_to_do() -> None:
    with pytest.raises(TandemError, match="bitsandbytes.*pip install"):
        resolve_precision("hf", "int8", Platform("cpu", bitsandbytes=None))
    with pytest.raises(TandemError, match="NVIDIA.*use backend = 'hf'"):
        resolve_precision("unsloth", "nf4", CPU)
    with pytest.raises(TandemError, match="compute capability 8.0"):
        resolve_precision("hf", "bf16", T4)


def test_auto_is_concrete() -> None:
    assert default_precision("hf", CPU) == "fp32"
    assert default_precision("hf", T4) == "fp16"
    assert default_precision("vllm", H100) == "bf16"
    assert resolve_precision("hf", "auto", CPU) == "fp32"


def test_bitsandbytes_8bit_cast_warning_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    quiet_bitsandbytes()
    quiet_bitsandbytes()  # idempotent: one filter, not two
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(50):
            logger.warning("MatMul8bitLt: inputs will be cast from %s to float16", "fp32")
        logger.warning("something else")
    messages = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert sum("will be cast" in m for m in messages) <= 1
    assert "something else" in messages


def test_hub_kernel_advice_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_bitsandbytes()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "x")
    assert not [r for r in caplog.records if r.name == logger.name]
