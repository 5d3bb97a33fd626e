"""Shared fixtures. Nothing heavy happens at import or collection time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "ifeval" / "input_data.jsonl").is_file():
        pytest.skip(f"task data not found at {DATA} (../shared/data beside the checkout)")
    return DATA


@pytest.fixture(scope="session")
def embedded_backend():
    """The hf backend on the embedded SmolLM2, fp32 CPU, loaded once per session."""
    pytest.importorskip("torch")
    from gpu_worker.backends import create_backend
    from shared.spec import RunSpec

    return create_backend(RunSpec(tasks=("ifeval",), precision="fp32", device="cpu"))


@pytest.fixture(scope="session")
def ray_head():
    """A private Ray head on 127.0.0.1 (own temp dir, stopped and removed afterwards)."""
    pytest.importorskip("ray")
    from gpu_worker.ray_local import local_ray_head

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    with local_ray_head(num_cpus=2) as head:
        yield head
