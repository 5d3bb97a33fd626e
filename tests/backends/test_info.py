"""info(): besides the model, what the worker really resolved (never "auto")."""

from __future__ import annotations

import socket

import pytest

from gpu_worker.backends import create_backend
from shared.spec import RunSpec

KEYS = {
    "model_id",
    "model_revision",
    "model_file_sha256",
    "chat_template_sha256",
    "precision",
    "device",
    "backend",
    "engine",
    "engine_version",
    "dtype",
    "device_name",
    "host",
    "batch_size",
    "threads",
}


def test_fake_backend_info() -> None:
    info = create_backend(RunSpec(tasks=("ifeval",), backend="fake")).info()
    assert KEYS <= info.keys()
    assert info["precision"] == "fp32" and info["device"] == "cpu"
    assert (info["backend"], info["engine"], info["engine_version"]) == ("fake", "fake", "")
    assert info["dtype"] == "none" and info["batch_size"] == "auto"
    assert info["host"] == socket.gethostname()
    assert isinstance(info["device_name"], str)


@pytest.mark.slow
def test_hf_backend_info_is_resolved() -> None:
    torch = pytest.importorskip("torch")
    import transformers

    spec = RunSpec(tasks=("ifeval",), precision="auto", generation={"batch_size": 16})
    info = create_backend(spec).info()
    assert KEYS <= info.keys()
    assert info["backend"] == "hf" and info["engine"] == "transformers"
    assert info["engine_version"] == transformers.__version__
    assert info["batch_size"] == "16" and info["host"] == socket.gethostname()
    assert info["device_name"]
    if info["device"] == "cpu":
        assert info["precision"] == "fp32" and info["dtype"] == "float32"
        assert info["threads"] == torch.get_num_threads()
    else:
        assert info["precision"] in ("bf16", "fp16") and info["threads"] is None
