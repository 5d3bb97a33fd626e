"""The transformers backend: CPU or GPU, fp32/bf16/fp16, int8/nf4 via bitsandbytes,
LoRA via peft.

This module loads the model (device, precision, quantization, adapter) and renders and
encodes prompts; the work is done by two engines built on the loaded model:

- ``_hf_decode.GreedyDecoder``: greedy generation, left-padded and longest-first, with
  tandem's own KV-cache loop (``generate`` as the fallback; the cache that grows in place
  and the stream of rows are in ``_hf_stream``);
- ``_hf_loglik.LoglikelihoodScorer``: log-likelihoods packed into prefix trees, plain
  rows, lm-eval's rolling windows.

torch and transformers are imported when the backend is built, not with this module.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

from gpu_worker import tokens as token_rules
from gpu_worker.adapters import precheck_adapter
from gpu_worker.backends.base import (
    BackendInfo,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
)
from gpu_worker.batching import available_cores
from gpu_worker.hardware import device_name, host_name
from gpu_worker.models import resolve_model
from gpu_worker.precision import (
    BNB_CPU_MIN,
    Platform,
    cpu_has_native_bf16,
    detect_platform,
    gpu_bf16,
    no_bf16,
    quiet_bitsandbytes,
    resolve_precision,
)
from shared.errors import TandemError
from shared.spec import RunSpec

log = logging.getLogger(__name__)

# Unquantized precisions and the torch dtype each loads in.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def refusal(precision: str, platform: Platform) -> str | None:
    """Why hf cannot run ``precision`` on ``platform``, or None if it can."""
    if precision == "bf16" and platform.device == "cuda" and not gpu_bf16(platform):
        return no_bf16(platform)
    if precision in ("int8", "nf4"):
        if platform.bitsandbytes is None:
            return f"{precision} needs bitsandbytes: pip install 'tandem-eval[quant]'"
        if platform.device == "cpu" and platform.bitsandbytes < BNB_CPU_MIN:
            have = ".".join(map(str, platform.bitsandbytes))
            want = ".".join(map(str, BNB_CPU_MIN))
            return (
                f"{precision} on CPU needs bitsandbytes >= {want} (its CPU backend); "
                f"installed: {have}. pip install -U bitsandbytes, or use a GPU"
            )
    return None


@dataclass(frozen=True)
class Loaded:
    """A model and tokenizer already in memory, and the name the record gives them."""

    model: Any
    tokenizer: Any
    model_id: str


class HFBackend:
    name = "hf"
    engine = "transformers"
    # Whether log-likelihood requests are packed into prefix trees (a custom 4-D mask).
    packs_loglikelihood = True

    def __init__(self, spec: RunSpec, loaded: Loaded | None = None):
        """Load the spec's model, or, with ``loaded``, use a model already in memory
        (``tandem.evaluate`` in a training loop): then nothing is loaded or moved, the
        device and dtype are the model's, and the caller restores its train mode."""
        import torch
        from transformers import AutoTokenizer

        from gpu_worker.models import ResolvedModel

        self.spec = spec
        self.loglik_seconds = 0.0  # log-likelihood forward time since take_telemetry()
        if loaded is not None:
            parameter = next(loaded.model.parameters())
            self.device = parameter.device.type
            dtype = str(parameter.dtype).removeprefix("torch.")
            self.precision = next((p for p, d in DTYPES.items() if d == dtype), "fp32")
            self.resolved = ResolvedModel("", loaded.model_id, "", "")
            self._attach(loaded.model, loaded.tokenizer)
            return
        self.device = self._pick_device(spec.device)
        if self.device == "cpu":
            torch.set_num_threads(available_cores())
        self.precision = self._pick_precision(spec.precision)
        resolved = resolve_model(spec.model, spec.revision)
        self.resolved = resolved
        tokenizer = AutoTokenizer.from_pretrained(resolved.load_path, revision=spec.revision)
        self._attach(self._load_model(resolved.load_path), tokenizer)

    def _attach(self, model: Any, tokenizer: Any) -> None:
        """The engines over a loaded model and its tokenizer."""
        from gpu_worker.backends._hf_decode import GreedyDecoder
        from gpu_worker.backends._hf_loglik import LoglikelihoodScorer

        spec = self.spec
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model
        self.model.eval()
        self.dtype = self._dtype_name()
        config = self.model.config
        self.max_length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = {i for i in eos_ids if i is not None}
        batch_size = spec.generation.batch_size
        self.decoder = GreedyDecoder(
            self.model,
            self.tokenizer,
            device=self.device,
            precision=self.precision,
            eos_ids=self.eos_ids,
            max_length=self.max_length,
            batch_size=batch_size,
            template_prefix=self._template_prefix(),
        )
        self.scorer = LoglikelihoodScorer(
            self.model,
            device=self.device,
            pad_id=self.tokenizer.pad_token_id,
            prefix_id=self.prefix_token_id,
            max_length=self.max_length,
            batch_size=batch_size if isinstance(batch_size, int) else 64,
            pack=self.packs_loglikelihood,
        )

    # ---- setup -------------------------------------------------------------------------
    @staticmethod
    def _pick_device(requested: str) -> str:
        import torch

        if requested == "cuda" and not torch.cuda.is_available():
            raise TandemError("device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
        if requested == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return requested

    def _pick_precision(self, requested: str) -> str:
        # Refused here, before any weights load, when this platform cannot run it;
        # "auto" becomes the concrete precision that run.json records.
        precision = resolve_precision(self.name, requested, detect_platform(self.device))
        if precision == "bf16" and self.device == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "bf16 on this CPU has no native bf16 instructions (no avx512_bf16/amx): it "
                "runs several times slower than fp32 here; use precision = 'fp32'",
                stacklevel=2,
            )
        return precision

    def _load_model(self, path: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        if self.spec.adapter:
            precheck_adapter(self.spec.adapter, self.spec.model, path, self.spec.revision)
        kwargs: dict[str, Any] = {"revision": self.spec.revision}
        if self.precision in DTYPES:
            kwargs["dtype"] = getattr(torch, DTYPES[self.precision])
        else:
            kwargs.update(self._quantization_kwargs())
        kwargs.update(self.spec.engine_kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if self.precision in DTYPES:
            model = model.to(self.device)
        if self.spec.adapter:
            model = self._attach_adapter(model, self.spec.adapter)
        return model

    def _compute_dtype(self) -> Any:
        """The dtype of the dequantized matmuls of int8/nf4: bf16 where the GPU has it,
        fp16 on older GPUs, fp32 on CPU (the reference dtype; bf16 emulation would be
        slower)."""
        import torch

        if self.device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    def _quantization_kwargs(self) -> dict[str, Any]:
        quiet_bitsandbytes()  # before the import: it logs from import time on
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as error:
            raise TandemError(
                f"precision {self.precision!r} needs bitsandbytes: pip install 'tandem-eval[quant]'"
            ) from error
        compute = self._compute_dtype()
        if self.precision == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
            )
        return {"quantization_config": config, "device_map": self.device, "dtype": compute}

    def _dtype_name(self) -> str:
        """What the weights run in, for info(): "bfloat16", or "nf4 (bitsandbytes,
        compute float32)" for quantized weights."""
        if self.precision in DTYPES:
            return DTYPES[self.precision]
        compute = str(self._compute_dtype()).removeprefix("torch.")
        return f"{self.precision} (bitsandbytes, compute {compute})"

    def _attach_adapter(self, model: Any, adapter: str) -> Any:
        quiet_bitsandbytes()  # peft imports bitsandbytes when it is installed
        try:
            from peft import PeftModel
        except ImportError as error:
            raise TandemError("a LoRA adapter needs peft: pip install peft") from error
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        if self.spec.merge_adapter:
            if self.precision in ("int8", "nf4"):
                # peft dequantizes, adds B@A and quantizes again: the merged model rounds
                # differently from base + adapter, so its numbers differ slightly.
                log.warning(
                    "merging a LoRA into %s weights re-quantizes them; results differ "
                    "slightly from the unmerged adapter",
                    self.precision,
                )
            model = model.merge_and_unload()
        return model

    def _template_prefix(self) -> list[int]:
        """The chat template's tokens before the user's message: what the renderings of
        two different prompts share. The decoder prefills them once per batch."""
        if not self.has_chat_template():
            return []
        a, b = (self.encode(self.render(text, True)) for text in ("a", "b"))
        return a[: token_rules.common_prefix(a, b)]

    # ---- prompts -----------------------------------------------------------------------
    def has_chat_template(self) -> bool:
        return bool(token_rules.chat_template(self.tokenizer))

    def render(self, prompt: str, chat: bool) -> str:
        return token_rules.render(self.tokenizer, prompt, chat, self.spec.model)

    def encode(self, text: str) -> list[int]:
        # No special tokens: the chat template already has them, and lm-eval encodes
        # causal-LM inputs without BOS too, so log-probs stay comparable.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's token boundary (see gpu_worker.tokens.split_pair)."""
        return token_rules.split_pair(self.encode, self.prefix_token_id, context, continuation)

    @property
    def prefix_token_id(self) -> int:
        return token_rules.prefix_token_id(self.tokenizer)

    def _engine_version(self) -> str:
        import transformers

        return transformers.__version__

    def info(self) -> dict[str, Any]:
        import torch

        return BackendInfo(
            model_id=self.resolved.model_id,
            model_revision=self.resolved.revision,
            model_file_sha256=self.resolved.file_sha256,
            chat_template_sha256=token_rules.chat_template_sha256(self.tokenizer),
            precision=self.precision,
            device=self.device,
            backend=self.name,
            engine=self.engine,
            engine_version=self._engine_version(),
            dtype=self.dtype,
            device_name=device_name(self.device),
            host=host_name(),
            batch_size=str(self.spec.generation.batch_size),
            threads=torch.get_num_threads() if self.device == "cpu" else None,
            extra={"torch_threads": torch.get_num_threads(), "max_length": self.max_length},
        ).as_dict()

    def take_telemetry(self) -> dict[str, Any]:
        """Counters since the last call (see gpu_worker.telemetry): the decoder's prefill
        and decode seconds and batch sizes, log-likelihood passes as prefill, and the
        GPU's peak allocation (its peak is reset for the next shard)."""
        import torch

        stats = self.decoder.take_stats()
        stats["prefill_seconds"] += self.loglik_seconds
        self.loglik_seconds = 0.0
        if self.device == "cuda":
            stats["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        return stats

    # ---- the contract ------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Greedy completions; over-long prompts are cut from the left (see
        gpu_worker.tokens.truncate_prompt) and the row records how many tokens went."""
        prompts = [
            token_rules.truncate_prompt(
                self.encode(request.prompt),
                self.tokenizer.eos_token_id,
                self.max_length,
                request.max_new_tokens,
                self.spec.generation.max_prompt_tokens,
            )
            for request in requests
        ]
        heads: dict[str, list[int]] = {}
        shared = [
            self._prefix_tokens(request, ids, heads) if not cut else 0
            for request, (ids, cut) in zip(requests, prompts, strict=True)
        ]
        return self.decoder.generate(requests, prompts, shared)

    def _prefix_tokens(
        self, request: GenerationRequest, ids: list[int], heads: dict[str, list[int]]
    ) -> int:
        """How many of the prompt's first tokens are its declared shared prefix: the
        tokens of the rendered text up to the end of ``request.prefix``, as far as they
        agree with the whole prompt's (a token may join across the boundary). It
        depends on the request alone, never on its batch neighbours."""
        if not request.prefix:
            return 0
        at = request.prompt.find(request.prefix)
        if at < 0:
            return 0
        text = request.prompt[: at + len(request.prefix)]
        if text not in heads:
            heads[text] = self.encode(text)
        return min(token_rules.common_prefix(heads[text], ids), len(ids) - 1)

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """Sum of log-probs of each continuation given its context, and whether every
        continuation token is the greedy one (see LoglikelihoodScorer.loglikelihood)."""
        started = time.perf_counter()
        results = self.scorer.loglikelihood(
            [self.split_pair(r.context, r.continuation) for r in requests]
        )
        self.loglik_seconds += time.perf_counter() - started
        return results

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[RollingResult]:
        """Sum of log-probs of every token of each text, in lm-eval's rolling windows
        of ``window`` tokens advancing by ``stride``."""
        started = time.perf_counter()
        results = [self.scorer.rolling(self.encode(r.text), r.window, r.stride) for r in requests]
        self.loglik_seconds += time.perf_counter() - started
        return results


def create(spec: RunSpec) -> HFBackend:
    return HFBackend(spec)
