"""Which precisions a backend can run on this machine, decided before any weights load.

A run that asks for a precision the platform cannot do stops at once with the reason
(no half-hour model download followed by a cryptic kernel error). ``auto`` becomes a
concrete precision here, so run.json and every shard record what really ran.

What each backend refuses is declared in its own module (``refusal(precision,
platform)``, next to the engine it describes); ``refusal`` and ``resolve_precision``
here dispatch to it. Only torch is imported here (lazily), never the engines: the
checks need to know the GPU, not the engine.
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


def gpu_bf16(platform: Platform) -> bool:
    return platform.compute_capability is not None and platform.compute_capability >= (8, 0)


def where(platform: Platform) -> str:
    """The device as refusal messages name it."""
    capability = ".".join(map(str, platform.compute_capability or ()))
    return "this CPU" if platform.device == "cpu" else f"this GPU (compute capability {capability})"


def no_bf16(platform: Platform) -> str:
    return (
        "bf16 needs an Ampere or newer GPU (compute capability 8.0+), "
        f"not {where(platform)}; use fp16"
    )


def default_precision(backend: str, platform: Platform) -> str:
    """What ``precision = "auto"`` means: the fastest exact-enough precision.

    fp32 on CPU (bf16 without hardware support is several times slower there, and
    fp32 is the reference every other precision is compared with); bf16 on a GPU that
    has it, else fp16 (pre-Ampere GPUs have no bf16 tensor cores).
    """
    if platform.device == "cpu":
        return "fp32"
    return "bf16" if gpu_bf16(platform) else "fp16"


def refusal(backend: str, precision: str, platform: Platform) -> str | None:
    """Why ``backend`` cannot run ``precision`` here, or None if it can.

    Each backend module declares its own ``refusal(precision, platform)``, importable
    without its engine; this asks it, then holds it to the precisions the registry
    says it runs. An unknown backend is refused by create_backend, not here.
    """
    from gpu_worker.backends import BACKENDS, backend_refusal

    if backend not in BACKENDS:
        return None
    reason = backend_refusal(backend)(precision, platform)
    if reason is None and precision not in BACKENDS[backend].precisions:
        runs = ", ".join(BACKENDS[backend].precisions)
        return f"backend {backend!r} runs {runs}, not {precision}"
    return reason


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
