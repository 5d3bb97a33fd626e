"""unsloth is NVIDIA-only: anywhere else choosing it fails clearly, and only it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _support import cuda_available

from shared.errors import TandemError
from shared.spec import RunSpec


@pytest.mark.skipif(cuda_available(), reason="this checks the no-GPU refusal")
def test_refused_without_nvidia_gpu_before_importing_unsloth() -> None:
    # A fresh process: the refusal must come before `import unsloth` (whose own import
    # raises without a GPU) and must leave the other backends usable.
    code = """
import sys
from gpu_worker.backends import create_backend
from shared.errors import TandemError
from shared.spec import RunSpec
try:
    create_backend(RunSpec(tasks=("ifeval",), backend="unsloth", precision="nf4"))
except TandemError as error:
    print("REFUSED:", error)
print("UNSLOTH_IMPORTED:", "unsloth" in sys.modules)
fake = create_backend(RunSpec(tasks=("ifeval",), backend="fake"))
print("FAKE_OK:", fake.name)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "REFUSED: backend 'unsloth' runs only on NVIDIA GPUs" in result.stdout
    assert "use backend = 'hf'" in result.stdout
    assert "UNSLOTH_IMPORTED: False" in result.stdout
    assert "FAKE_OK: fake" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU")
def test_fp32_refused_on_gpu_too() -> None:
    from gpu_worker.backends import create_backend

    with pytest.raises(TandemError, match="16-bit or quantized"):
        create_backend(RunSpec(tasks=("ifeval",), backend="unsloth", precision="fp32"))


@pytest.mark.slow
def test_unsloth_scores_every_request_as_a_plain_row(monkeypatch) -> None:
    """unsloth's patched attention may build its own mask, so its backend never packs:
    checked on CPU with a stand-in ``unsloth`` module that loads the embedded model
    with transformers (the class, not unsloth's kernels, is what is under test)."""
    import types

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_worker.backends import LoglikelihoodRequest, _hf_loglik, create_backend
    from gpu_worker.backends import hf as hf_module
    from gpu_worker.backends import unsloth as unsloth_module

    loaded = []

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, **options):
            loaded.append(options)
            model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
            return model, AutoTokenizer.from_pretrained(model_name)

        @staticmethod
        def for_inference(model):
            return model

    monkeypatch.setitem(
        sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel)
    )
    monkeypatch.setattr(unsloth_module, "check_platform", lambda spec: None)
    monkeypatch.setattr(hf_module.HFBackend, "_pick_precision", lambda self, requested: "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    backend = create_backend(RunSpec(tasks=("arc_easy",), backend="unsloth", device="cpu"))
    assert backend.name == "unsloth" and loaded and loaded[0]["dtype"] == torch.bfloat16
    assert backend.scorer.packing_depth == 0
    requests = [
        LoglikelihoodRequest("Question: What do bees make?\nAnswer:", choice)
        for choice in (" honey", " honey from nectar", " milk")
    ]
    packed_calls = []
    monkeypatch.setattr(
        _hf_loglik.LoglikelihoodScorer,
        "_packed_rows",
        lambda self, pairs: packed_calls.append(pairs) or iter(()),
    )
    results = backend.loglikelihood(requests)
    assert all(not pairs for pairs in packed_calls)
    rows = dict(
        backend.scorer._plain_rows(
            [backend.split_pair(r.context, r.continuation) for r in requests]
        )
    )
    assert [r.logprob for r in results] == [rows[i].logprob for i in range(len(requests))]
    assert all(r.error is None and r.logprob < 0 for r in results)
