"""What a worker runs on, by name, for provenance: the host and the device.

Light on purpose: torch is imported only to name a GPU, which a CUDA run has loaded
already; a CPU is named from /proc/cpuinfo.
"""

from __future__ import annotations

import platform
import socket


def host_name() -> str:
    return socket.gethostname()


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), or what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_name(device: str) -> str:
    """The GPU's name for ``device = "cuda"``, else the CPU's."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return cpu_name()
