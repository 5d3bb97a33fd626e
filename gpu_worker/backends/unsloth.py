"""The unsloth backend: unsloth's fast loading, dynamic 4-bit and adapters, on NVIDIA.

An unsloth model is a transformers model with patched kernels, so generation and
log-likelihood are the hf backend's own code (same batching, same lm-eval token
boundaries, same numbers to compare); only loading differs:

- ``FastLanguageModel.from_pretrained`` with ``load_in_4bit`` for nf4 (unsloth's
  dynamic 4-bit: the layers that quantize badly stay 16-bit) or ``load_in_8bit``;
- the adapter goes on with peft after the base check (an unsloth-trained LoRA is a
  peft LoRA), optionally merged;
- ``FastLanguageModel.for_inference`` switches on its 2x faster decoding.

unsloth runs only on NVIDIA GPUs; anywhere else choosing it fails before unsloth is
imported (its import itself raises without a GPU), and nothing else is affected.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gpu_worker.adapters import precheck_adapter
from gpu_worker.precision import Platform, detect_platform, gpu_bf16, no_bf16
from shared.errors import TandemError
from shared.spec import RunSpec

log = logging.getLogger(__name__)
INSTALL = "pip install 'tandem-eval[unsloth]'"


def refusal(precision: str, platform: Platform) -> str | None:
    """Why unsloth cannot run ``precision`` on ``platform``, or None if it can."""
    if platform.device != "cuda" or not platform.nvidia:
        has = "no CUDA GPU" if platform.device != "cuda" else "a non-NVIDIA GPU"
        return (
            "backend 'unsloth' runs only on NVIDIA GPUs (its Triton kernels need CUDA) and "
            f"this machine has {has}; use backend = 'hf', which runs the same precisions "
            "(and the same adapters) here"
        )
    if precision == "fp32":
        return "unsloth runs 16-bit or quantized weights only; use backend = 'hf' for fp32"
    if precision == "bf16" and not gpu_bf16(platform):
        return no_bf16(platform)
    if precision in ("int8", "nf4") and platform.bitsandbytes is None:
        return f"{precision} on unsloth needs bitsandbytes: pip install 'tandem-eval[quant]'"
    return None


def check_platform(spec: RunSpec) -> None:
    """Refuse a machine without an NVIDIA GPU, before unsloth is imported."""
    import torch

    device = "cuda" if torch.cuda.is_available() and spec.device != "cpu" else "cpu"
    reason = refusal("bf16", detect_platform(device))
    if reason:
        raise TandemError(reason)


def create(spec: RunSpec) -> Any:
    check_platform(spec)
    # unsloth patches transformers when it is imported, so it goes first. Logits are
    # what log-likelihood needs; unsloth may skip them to save memory in training.
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
    try:
        import unsloth
        from unsloth import FastLanguageModel
    except ImportError as error:
        raise TandemError(f"backend 'unsloth' needs unsloth: {INSTALL} ({error})") from error
    from gpu_worker.backends.hf import HFBackend

    class UnslothBackend(HFBackend):
        name = "unsloth"
        engine = "unsloth"
        # unsloth replaces the attention forward with its own kernels, which may build
        # their own causal mask: a packed row's tree mask is not known to survive that
        # (no GPU has checked it), so every request is a plain row, as lm-eval runs it.
        packs_loglikelihood = False

        def _load_model(self, path: str) -> Any:
            if self.spec.adapter:
                precheck_adapter(self.spec.adapter, self.spec.model, path, self.spec.revision)
            options: dict[str, Any] = {
                "model_name": path,
                "max_seq_length": 4096,
                "dtype": self._compute_dtype(),
                "load_in_4bit": self.precision == "nf4",
                "load_in_8bit": self.precision == "int8",
            }
            options.update(self.spec.engine_kwargs)  # e.g. max_seq_length, token
            model, _ = FastLanguageModel.from_pretrained(**options)
            if self.spec.adapter:
                model = self._attach_adapter(model, self.spec.adapter)
            FastLanguageModel.for_inference(model)
            return model

        def _engine_version(self) -> str:
            return str(getattr(unsloth, "__version__", ""))

        def _compute_dtype(self) -> Any:
            """bf16/fp16 as asked; int8/nf4 compute in bf16 where the GPU has it."""
            import torch

            dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
            compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return dtypes.get(self.precision, compute)

    return UnslothBackend(spec)
