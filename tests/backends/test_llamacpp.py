"""The llamacpp backend's checks that need no engine (the engine itself runs in the
conformance suite, test_conformance.py, when llama-cpp-python is installed)."""

from __future__ import annotations

import pytest

from gpu_worker.backends import create_backend
from gpu_worker.backends._gguf import gguf_path
from shared.errors import TandemError
from shared.spec import RunSpec


def spec(**fields) -> RunSpec:
    return RunSpec(tasks=("ifeval",), backend="llamacpp", **fields)


def test_only_auto_precision_runs() -> None:
    with pytest.raises(TandemError, match="as they ship.*precision = 'auto'"):
        create_backend(spec(precision="fp32"))


def test_adapters_are_refused_before_loading() -> None:
    with pytest.raises(TandemError, match="takes no LoRA adapter"):
        create_backend(spec(adapter="./lora"))


def test_unknown_engine_kwargs_name_the_allowed_ones() -> None:
    with pytest.raises(TandemError, match="did you mean 'n_ctx'"):
        create_backend(spec(engine_kwargs={"n_ctxx": 4096}))


def test_only_gguf_files(tmp_path) -> None:
    with pytest.raises(TandemError, match="runs .gguf files"):
        gguf_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(TandemError, match="does not exist"):
        gguf_path(str(tmp_path / "missing.gguf"))
    assert gguf_path("embedded:smollm2-135m-instruct").endswith(".gguf")


@pytest.mark.slow
@pytest.mark.llamacpp
def test_info_records_what_the_file_holds() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: make test-llamacpp")
    from gpu_worker.batching import available_cores

    backend = create_backend(spec())
    try:
        info = backend.info()
    finally:
        backend.close()
    assert info["precision"] == "q4_1" and info["dtype"] == "Q4_1 (GGUF, as shipped)"
    assert (info["backend"], info["engine"], info["device"]) == ("llamacpp", "llama.cpp", "cpu")
    assert info["threads"] == available_cores()
    assert len(info["model_file_sha256"]) == 64 and len(info["chat_template_sha256"]) == 64
