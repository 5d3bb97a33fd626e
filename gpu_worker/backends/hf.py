"""The transformers backend: CPU or GPU, fp32/bf16/fp16, int8/nf4 via bitsandbytes,
LoRA via peft.

Generation is greedy, left-padded and longest-first with the KV cache. Log-likelihood
requests are packed into prefix trees: a prefix shared by several requests (the context
of every choice of a question, the few-shot block of one subject) runs through the
model once, rows carry no padding, and only the positions that are scored go through
the LM head: a 5-shot MMLU prompt is ~700 tokens and full-vocabulary logits for all of
them would cost ~140 MB per row for nothing.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from gpu_worker import tokens as token_rules
from gpu_worker.adapters import check_adapter
from gpu_worker.backends.base import (
    BackendInfo,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
)
from gpu_worker.batching import available_cores, length_sorted_batches
from gpu_worker.models import resolve_model
from gpu_worker.precision import detect_platform, quiet_bitsandbytes, resolve_precision
from shared.errors import TandemError
from shared.spec import RunSpec

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Padded tokens per log-likelihood forward pass; bounds activation memory on CPU.
LOGLIK_TOKEN_BUDGET = 8192
# Longest sequence packed (its row's mask is length^2: 8192 tokens -> 256 MB in fp32);
# longer ones run as plain causal rows.
PACK_DEPTH_LIMIT = 8192
# Padded tokens per prefill pass of the greedy loop, and the columns the cache grows by.
PREFILL_TOKEN_BUDGET = 4096
CACHE_GROWTH = 128


def cpu_has_native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of a buffer with free columns after
    them: a step writes its column in place instead of concatenating (a full copy of
    the cache per layer per step, a fifth of a decode step at 120 tokens)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self._keys, self._values, self._length = keys, values, length
        self._view()

    def _view(self) -> None:
        self.keys = self._keys[:, :, : self._length]
        self.values = self._values[:, :, : self._length]

    def update(self, key_states, value_states, *args, **kwargs):
        added = key_states.shape[-2]
        if self._length + added > self._keys.shape[-2]:
            grow = max(added, CACHE_GROWTH)
            self._keys = F.pad(self._keys, (0, 0, 0, grow))
            self._values = F.pad(self._values, (0, 0, 0, grow))
        self._keys[:, :, self._length : self._length + added] = key_states
        self._values[:, :, self._length : self._length + added] = value_states
        self._length += added
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view()

    def drop_columns(self, start: int, count: int) -> None:
        """Forget ``count`` columns from ``start`` on (padding no remaining row uses)."""

        def drop(buffer: torch.Tensor) -> torch.Tensor:
            if start == 0:
                return buffer[:, :, count:]
            return torch.cat([buffer[:, :, :start], buffer[:, :, start + count :]], 2)

        self._keys, self._values = drop(self._keys), drop(self._values)
        self._length -= count
        self._view()

    def crop(self, max_length: int) -> None:  # pragma: no cover - not used by the loop
        raise NotImplementedError

    def batch_repeat_interleave(self, repeats: int) -> None:  # pragma: no cover
        raise NotImplementedError


class HFBackend:
    name = "hf"

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.device = self._pick_device(spec.device)
        if self.device == "cpu":
            torch.set_num_threads(available_cores())
        self.precision = self._pick_precision(spec.precision)
        resolved = resolve_model(spec.model, spec.revision)
        self.resolved = resolved
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.load_path, revision=spec.revision)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = self._load_model(resolved.load_path)
        self.model.eval()
        config = self.model.config
        self.max_length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = {i for i in eos_ids if i is not None}

    # ---- setup -------------------------------------------------------------------------
    @staticmethod
    def _pick_device(requested: str) -> str:
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
        if self.spec.adapter:
            # Before the weights load: a wrong base should cost a second, not a download.
            from transformers import AutoConfig

            base_config = AutoConfig.from_pretrained(path, revision=self.spec.revision)
            check_adapter(self.spec.adapter, self.spec.model, path, base_config)
        kwargs: dict[str, Any] = {"revision": self.spec.revision}
        if self.precision in DTYPES:
            kwargs["dtype"] = DTYPES[self.precision]
        else:
            kwargs.update(self._quantization_kwargs())
        kwargs.update(self.spec.engine_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if self.precision in DTYPES:
            model = model.to(self.device)
        if self.spec.adapter:
            model = self._attach_adapter(model)
        return model

    def _quantization_kwargs(self) -> dict[str, Any]:
        quiet_bitsandbytes()  # before the import: it logs from import time on
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as error:
            raise TandemError(
                f"precision {self.precision!r} needs bitsandbytes: pip install 'tandem-eval[quant]'"
            ) from error
        # Compute dtype of the dequantized matmuls: bf16 where the GPU has it, fp16 on
        # older GPUs, fp32 on CPU (the reference dtype; bf16 emulation would be slower).
        if self.device == "cuda":
            compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            compute = torch.float32
        if self.precision == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
            )
        return {"quantization_config": config, "device_map": self.device, "dtype": compute}

    def _attach_adapter(self, model: Any) -> Any:
        quiet_bitsandbytes()  # peft imports bitsandbytes when it is installed
        try:
            from peft import PeftModel
        except ImportError as error:
            raise TandemError("a LoRA adapter needs peft: pip install peft") from error
        model = PeftModel.from_pretrained(model, self.spec.adapter, is_trainable=False)
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

    # ---- prompts -----------------------------------------------------------------------
    def has_chat_template(self) -> bool:
        return bool(token_rules.chat_template(self.tokenizer))

    def render(self, prompt: str, chat: bool) -> str:
        return token_rules.render(self.tokenizer, prompt, chat, self.spec.model)

    def encode(self, text: str) -> list[int]:
        # No special tokens: the chat template already has them, and lm-eval encodes
        # causal-LM inputs without BOS too, so log-probs stay comparable.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def info(self) -> dict[str, Any]:
        return BackendInfo(
            model_id=self.resolved.model_id,
            model_revision=self.resolved.revision,
            model_file_sha256=self.resolved.file_sha256,
            chat_template_sha256=token_rules.chat_template_sha256(self.tokenizer),
            precision=self.precision,
            device=self.device,
            extra={"torch_threads": torch.get_num_threads(), "max_length": self.max_length},
        ).as_dict()

    # ---- generation --------------------------------------------------------------------
    def _generation_batch_size(self, longest_total: int) -> int:
        """Rows per generation batch. ``longest_total`` is the longest prompt plus
        max_new_tokens: the KV cache grows to that length, so a batch that prefills
        fine can still run out of memory 1000 tokens later."""
        if isinstance(self.spec.generation.batch_size, int):
            return self.spec.generation.batch_size
        estimate = self._kv_batch_estimate(longest_total)
        if self.device != "cuda":
            return estimate
        return self._probe_batch_size(estimate, longest_total)

    def _probe_batch_size(self, start: int, longest_total: int) -> int:
        """On a GPU, run the worst-case shape once (``start`` rows of ``longest_total``
        tokens, cache on) and halve until it fits; the answer is cached per length
        bucket. A forward over the full length allocates the final KV cache and larger
        activations than any decoding step, so a size that passes here fits the real
        batch; an out-of-memory there anyway is still halved by _generate_batch."""
        bucket = max(longest_total, min(-(-longest_total // 256) * 256, self.max_length))
        # Per-instance cache, created on first use (a GPU-only path).
        probed: dict[int, int] = self.__dict__.setdefault("_probed_batch", {})
        if bucket in probed:
            return probed[bucket]
        size = start
        while size > 1 and not self._fits(size, bucket):
            size //= 2
        probed[bucket] = size
        return size

    @torch.inference_mode()
    def _fits(self, size: int, length: int) -> bool:
        ids = torch.full((size, length), self.tokenizer.pad_token_id, device=self.device)
        try:
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            return True
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not _is_oom(error):
                raise
            log.info("auto batch size: %d x %d tokens does not fit; halving", size, length)
            return False
        finally:
            del ids
            torch.cuda.empty_cache()

    def _kv_batch_estimate(self, longest_total: int) -> int:
        """Rows whose KV cache at full length fits the memory budget."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        bytes_per = 2 if self.precision in ("bf16", "fp16") else 4
        kv_per_token = 2 * config.num_hidden_layers * heads * head_dim * bytes_per
        if self.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            budget = int(free * 0.5)
        else:
            budget = 1 << 30  # 1 GiB of KV cache: keeps the CPU demo well under 4 GB
        by_memory = max(1, budget // max(1, kv_per_token * longest_total))
        return int(min(64, by_memory))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.max_new_tokens, request.stop), []).append(index)
        for (max_new, stop), indices in groups.items():
            limit = self.spec.generation.max_prompt_tokens or max(1, self.max_length - max_new)
            encoded = []
            for index in indices:
                ids = self.encode(requests[index].prompt)
                cut = max(0, len(ids) - limit)
                # Cut from the left: the instruction sits at the end of a chat prompt.
                encoded.append((ids[cut:] if ids else [self.tokenizer.eos_token_id], cut))
            lengths = [len(ids) for ids, _ in encoded]
            size = self._generation_batch_size(max(lengths) + max_new)
            for batch in length_sorted_batches(lengths, size):
                items = [encoded[i] for i in batch]
                for position, result in zip(
                    batch, self._generate_batch(items, max_new, stop), strict=True
                ):
                    results[indices[position]] = result
        return [r for r in results if r is not None]

    def _generate_batch(
        self, items: list[tuple[list[int], int]], max_new: int, stop: tuple[str, ...]
    ) -> list[GenerationResult]:
        try:
            return self._generate_padded(items, max_new, stop)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not _is_oom(error) or len(items) == 1:
                raise
            # Halve and retry the same items: never drop a batch.
            if self.device == "cuda":
                torch.cuda.empty_cache()
            half = len(items) // 2
            log.warning(
                "out of memory at batch %d; retrying as %d + %d",
                len(items),
                half,
                len(items) - half,
            )
            return self._generate_batch(items[:half], max_new, stop) + self._generate_batch(
                items[half:], max_new, stop
            )

    @torch.inference_mode()
    def _generate_padded(
        self, items: list[tuple[list[int], int]], max_new: int, stop: tuple[str, ...]
    ) -> list[GenerationResult]:
        if self._decode_loop_supported():
            results = self._decode_greedy(items, max_new, stop)
            if results is not None:
                return results
        return self._generate_with_generate(items, max_new, stop)

    def _decode_loop_supported(self) -> bool:
        """Our own greedy loop needs a decoder-only model whose forward takes
        ``logits_to_keep`` and returns a plain DynamicCache (checked after the first
        prefill, see _prefill). Anything else (encoder-decoder, recurrent or
        sliding-window caches) keeps transformers' ``generate``."""
        known = self.__dict__.get("_decode_loop")
        if known is not None:
            return known
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        parameters = inspect.signature(type(model).forward).parameters
        supported = not getattr(model.config, "is_encoder_decoder", False) and (
            "logits_to_keep" in parameters
        )
        self.__dict__["_decode_loop"] = supported
        return supported

    def _prefill_groups(self, lengths: list[int]) -> list[list[int]]:
        """Rows of similar length (longest first) for one prefill pass each: a prompt
        costs its own length, not the batch's longest (a third of the prefill of a
        sorted IFEval batch of 64 was padding)."""
        order = sorted(range(len(lengths)), key=lambda r: (-lengths[r], r))
        groups: list[list[int]] = []
        for row in order:
            if groups:
                head = lengths[groups[-1][0]]
                fits = head - lengths[row] <= max(4, head // 10)
                if fits and head * (len(groups[-1]) + 1) <= PREFILL_TOKEN_BUDGET:
                    groups[-1].append(row)
                    continue
            groups.append([row])
        return groups

    def _shared_prefix(self, items: list[tuple[list[int], int]]) -> int:
        """Tokens of the chat template before the user's message (SmolLM2's system
        prompt: 24 of its ~74-token IFEval prompts) when every prompt of the batch
        starts with them: they go through the model once per batch. The split depends
        on the template only, never on the batch, so a prompt is prefilled in the same
        two passes alone and batched (bf16 and nf4 greedy text stays batch-invariant)."""
        prefix = self.__dict__.get("_template_prefix")
        if prefix is None:
            prefix = []
            if self.has_chat_template():
                a, b = (self.encode(self.render(text, True)) for text in ("a", "b"))
                prefix = a[: _common_prefix(a, b)]
            self.__dict__["_template_prefix"] = prefix
        shared = len(prefix)
        if self.precision not in DTYPES:
            # nf4 on CPU: a batched row's greedy text flipped against the same prompt
            # alone with the prefix split (conformance suite); quantized models prefill
            # whole prompts, which keeps them batch-invariant as before.
            return 0
        if shared and all(len(ids) > shared and ids[:shared] == prefix for ids, _ in items):
            return shared
        return 0

    def _prefill(
        self, items: list[tuple[list[int], int]], shared: int, room: int
    ) -> tuple[DynamicCache, torch.Tensor] | None:
        """Every prompt through the model once, merged into one cache with ``room`` free
        columns at the end. The ``shared`` first tokens common to all prompts go through
        once; the rest of each prompt goes in groups of similar length. Layout of a row:
        [shared prefix | padding | rest of its prompt]; positions count real tokens
        only, so the padding in the middle is as invisible as on the left. None if the
        model's cache is not a plain DynamicCache."""
        pad = self.tokenizer.pad_token_id
        rests = [len(ids) - shared for ids, _ in items]
        width = shared + max(rests)
        first = torch.empty(len(items), dtype=torch.long, device=self.device)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []

        def plain(cache: Any) -> bool:
            supported = type(cache) is DynamicCache and all(
                type(layer) is DynamicLayer for layer in cache.layers
            )
            if not supported:
                self.__dict__["_decode_loop"] = False
            return supported

        prefix = None
        if shared:
            out = self.model(
                input_ids=torch.tensor([items[0][0][:shared]], device=self.device),
                logits_to_keep=1,
                use_cache=True,
            )
            prefix = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if not plain(prefix):
                return None
        for group in self._prefill_groups(rests):
            g = rests[group[0]]
            ids = torch.full((len(group), g), pad, dtype=torch.long)
            mask = torch.zeros((len(group), shared + g), dtype=torch.long)
            mask[:, :shared] = 1
            for row, index in enumerate(group):
                ids[row, g - rests[index] :] = torch.tensor(items[index][0][shared:])
                mask[row, shared + g - rests[index] :] = 1
            extra: dict[str, Any] = {}
            if prefix is not None:
                cache = DynamicCache()
                for number, layer in enumerate(prefix.layers):
                    cache.update(
                        layer.keys.expand(len(group), -1, -1, -1),
                        layer.values.expand(len(group), -1, -1, -1),
                        number,
                    )
                extra[self._cache_argument] = cache
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, shared:].to(self.device),
                logits_to_keep=1,
                use_cache=True,
                **extra,
            )
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if not plain(cache):
                return None
            where = torch.tensor(group, device=self.device)
            first[where] = out.logits[:, -1].argmax(-1)
            for number, layer in enumerate(cache.layers):
                if len(keys) <= number:
                    heads = layer.keys.shape[1]
                    shape = (len(items), heads, width + room, layer.keys.shape[-1])
                    keys.append(layer.keys.new_zeros(shape))
                    shape = (len(items), heads, width + room, layer.values.shape[-1])
                    values.append(layer.values.new_zeros(shape))
                for buffer, states in ((keys[number], layer.keys), (values[number], layer.values)):
                    if shared:
                        buffer[where, :, :shared] = states[:, :, :shared]
                    buffer[where, :, width - g : width] = states[:, :, shared:]
        merged = DynamicCache()
        merged.layers = [_GrowingLayer(k, v, width) for k, v in zip(keys, values, strict=True)]
        return merged, first

    def _decode_greedy(
        self, items: list[tuple[list[int], int]], max_new: int, stop: tuple[str, ...]
    ) -> list[GenerationResult] | None:
        """Greedy decoding over ``model(...)`` with the KV cache, token for token what
        ``generate`` gives, but: prompts are prefilled without cross-group padding, the
        cache grows in place (DynamicCache concatenates: a copy of the whole cache
        every step), only the last position reaches the LM head, and a row leaves the
        batch and the cache as soon as it ends (EOS, stop string, length), so the
        long tail of an IFEval batch (max_new_tokens 1280, most answers far shorter)
        runs at the size of the rows still going."""
        pad = self.tokenizer.pad_token_id
        started = time.perf_counter()
        lengths = [len(ids) for ids, _ in items]
        shared = self._shared_prefix(items)
        width = max(lengths)
        prefilled = self._prefill(items, shared, min(max_new, CACHE_GROWTH))
        if prefilled is None:
            return None
        cache, next_tokens = prefilled
        cache_argument = self._cache_argument
        mask = torch.ones((len(items), width + max_new), dtype=torch.long, device=self.device)
        for row, length in enumerate(lengths):
            mask[row, shared : shared + width - length] = 0
        positions = torch.tensor(lengths, device=self.device)[:, None]
        # A stop string is looked for in the decoded tail only: enough tokens to hold it.
        window = max((len(s) for s in stop), default=0) + 4
        generated: list[list[int]] = [[] for _ in items]
        finish = ["length"] * len(items)
        active = list(range(len(items)))
        trimmed = 0  # padding columns dropped: rows needing them left the batch
        for step in range(max_new):
            keep = []
            for slot, token in enumerate(next_tokens.tolist()):
                row = active[slot]
                if token in self.eos_ids:
                    finish[row] = "eos"
                    continue
                if token == pad:
                    # generate's output reads the same as a stop-string end; kept alike.
                    finish[row] = "stop"
                    continue
                generated[row].append(token)
                if stop:
                    tail = self.tokenizer.decode(generated[row][-window:])
                    if any(s in tail for s in stop):
                        finish[row] = "stop"
                        continue
                if step + 1 < max_new:
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions, next_tokens = mask[index], positions[index], next_tokens[index]
                active = [active[slot] for slot in keep]
                lead = min(width - lengths[row] for row in active) - trimmed
                if lead >= 16:
                    for layer in cache.layers:
                        layer.drop_columns(shared, lead)
                    mask = torch.cat([mask[:, :shared], mask[:, shared + lead :]], 1)
                    trimmed += lead
            seen = cache.get_seq_length()
            out = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=mask[:, : seen + 1],
                position_ids=positions,
                logits_to_keep=1,
                use_cache=True,
                **{cache_argument: cache},
            )
            next_tokens = out.logits[:, -1].argmax(-1)
            positions = positions + 1
        seconds = time.perf_counter() - started
        return [
            self._result(ids, cut, tokens, reason, stop, seconds, len(items))
            for (ids, cut), tokens, reason in zip(items, generated, finish, strict=True)
        ]

    def _result(
        self,
        ids: list[int],
        cut: int,
        tokens: list[int],
        finish: str,
        stop: tuple[str, ...],
        seconds: float,
        size: int,
    ) -> GenerationResult:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stop:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        return GenerationResult(
            text=text,
            prompt_tokens=len(ids),
            generated_tokens=len(tokens) + (finish == "eos"),
            finish_reason=finish,
            truncated_tokens=cut,
            batch_seconds=seconds,
            batch_size=size,
        )

    def _generate_with_generate(
        self, items: list[tuple[list[int], int]], max_new: int, stop: tuple[str, ...]
    ) -> list[GenerationResult]:
        """transformers' generate: the fallback for models _decode_greedy cannot run."""
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        kwargs: dict[str, Any] = {
            "do_sample": False,
            "max_new_tokens": max_new,
            "pad_token_id": pad,
            "eos_token_id": sorted(self.eos_ids),
            "use_cache": True,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        started = time.perf_counter()
        output = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
        )
        seconds = time.perf_counter() - started
        new_tokens = output[:, width:].tolist()
        results = []
        for (ids, cut), tokens in zip(items, new_tokens, strict=True):
            count, finish = 0, "length"
            for token in tokens:
                if token in self.eos_ids:
                    finish = "eos"
                    break
                if token == pad:
                    finish = "stop"  # finished early without EOS: a stop string ended it
                    break
                count += 1
            results.append(
                self._result(ids, cut, tokens[:count], finish, stop, seconds, len(items))
            )
        return results

    # ---- log-likelihood ----------------------------------------------------------------
    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's token boundary (see gpu_worker.tokens.split_pair)."""
        return token_rules.split_pair(self.encode, self.prefix_token_id, context, continuation)

    @property
    def prefix_token_id(self) -> int:
        return token_rules.prefix_token_id(self.tokenizer)

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """Sum of log-probs of each continuation given its context, and whether every
        continuation token is the greedy one.

        Requests are packed (see ``_loglikelihood_packed``): every distinct prefix --
        a question's context shared by its choices, a few-shot block shared by the
        questions of one subject -- runs through the model once, with no padding.
        A request too long for the window (its context is cut on the left, as lm-eval
        does) is one full row of its own.
        """
        pairs = [self.split_pair(r.context, r.continuation) for r in requests]
        results: list[LoglikelihoodResult | None] = [None] * len(requests)
        packed: list[int] = []
        rows_for: list[int] = []
        for index, (context_ids, cont_ids) in enumerate(pairs):
            if not cont_ids:
                results[index] = LoglikelihoodResult(0.0, True, 0, error="empty continuation")
            elif len(context_ids) + len(cont_ids) - 1 <= self._packing_depth:
                packed.append(index)
            else:
                rows_for.append(index)
        for index, result in self._loglikelihood_rows([pairs[i] for i in rows_for]):
            results[rows_for[index]] = result
        for index, result in self._loglikelihood_packed([pairs[i] for i in packed]):
            results[packed[index]] = result
        return [r for r in results if r is not None]

    def _loglikelihood_rows(self, pairs: list[tuple[list[int], list[int]]]):
        # One row per distinct model input. For a one-token continuation the input is
        # the context alone, so every single-token choice of a question shares a row.
        rows: dict[tuple[int, ...], int] = {}
        row_inputs: list[list[int]] = []
        row_keep: list[int] = []
        plans = []
        for context_ids, cont_ids in pairs:
            full = (context_ids + cont_ids)[-(self.max_length + 1) :]
            model_input = tuple(full[:-1])
            if model_input not in rows:
                rows[model_input] = len(row_inputs)
                row_inputs.append(list(model_input))
                row_keep.append(len(cont_ids))
            row = rows[model_input]
            row_keep[row] = max(row_keep[row], len(cont_ids))
            plans.append((row, cont_ids, len(context_ids)))
        row_logprobs = self._score_rows(row_inputs, row_keep)
        # batch_size counts the requests a forward served (rows are shared).
        served = Counter(row_logprobs[row][2] for row, _, _ in plans)
        for index, (row, cont_ids, context_len) in enumerate(plans):
            log_probs, seconds, batch = row_logprobs[row]
            # The last positions predict the continuation.
            scored = log_probs[-len(cont_ids) :]
            yield index, _pick(scored, cont_ids, context_len, seconds, served[batch])

    @property
    def _cache_argument(self) -> str:
        """transformers 5.x renamed forward's past_key_values to cache."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        parameters = inspect.signature(type(model).forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    @property
    def _packing_depth(self) -> int:
        """Longest sequence a packed row may hold: the position window, or the sliding
        window where a model has one (a custom mask replaces transformers' own, so the
        window must never bind), and at most PACK_DEPTH_LIMIT (the mask is row x row);
        0 where the attention kernel takes no custom mask."""
        config = self.model.config
        if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
            return 0
        depth = min(self.max_length, PACK_DEPTH_LIMIT)
        window = getattr(config, "sliding_window", None)
        if isinstance(window, int) and window > 0:
            return min(depth, window)
        return depth

    @property
    def _pack_tokens(self) -> int:
        """Tokens per packed row. Attention over a row costs ~row/(6 x hidden size) of
        the linear layers per token, so rows near the hidden size keep it a small
        share; GPUs want longer rows to stay busy."""
        hidden = int(getattr(self.model.config, "hidden_size", 1024) or 1024)
        floor, ceiling = (2048, 8192) if self.device == "cuda" else (512, 2048)
        return max(floor, min(ceiling, hidden))

    @torch.inference_mode()
    def _loglikelihood_packed(self, pairs: list[tuple[list[int], list[int]]]):
        """Every request's input (context + continuation minus its last token) goes into
        a prefix tree; a tree is laid out in one row in depth-first order, each token
        attending to its ancestors only and positioned at its depth. A shared prefix is
        then computed once, no row is padded, and only the positions that predict a
        continuation token go through the LM head. Exact: each token sees precisely
        its own sequence, as in a plain forward."""
        sequences = [tuple(context + cont[:-1]) for context, cont in pairs]
        dtype = self.model.get_input_embeddings().weight.dtype
        for chunk in _pack_rows(sequences, self._pack_tokens):
            started = time.perf_counter()
            tokens, depth, end, scored_nodes = [], [], [], {}
            path: list[int] = []  # tree nodes of the sequence before
            for i, shared in chunk:  # depth-first order: keep the shared part of the path
                sequence = sequences[i]
                del path[shared:]
                for token in sequence[len(path) :]:
                    path.append(len(tokens))
                    tokens.append(token)
                    depth.append(len(path) - 1)
                    end.append(0)
                for node in path:
                    end[node] = len(tokens)  # one past the node's last descendant
                # The context's last token predicts the first continuation token.
                scored_nodes[i] = path[len(pairs[i][0]) - 1 :]
            keep = sorted({node for nodes in scored_nodes.values() for node in nodes})
            row_of = {node: row for row, node in enumerate(keep)}
            nodes = torch.arange(len(tokens), device=self.device)
            ends = torch.tensor(end, device=self.device)
            # Query i sees key j when j is i or an ancestor: j <= i < end[j].
            visible = (nodes[None, :] <= nodes[:, None]) & (nodes[:, None] < ends[None, :])
            mask = torch.full(
                visible.shape, torch.finfo(dtype).min, dtype=dtype, device=self.device
            )
            mask.masked_fill_(visible, 0.0)
            del visible
            logits = self.model(
                input_ids=torch.tensor([tokens], device=self.device),
                position_ids=torch.tensor([depth], device=self.device),
                attention_mask=mask[None, None],
                logits_to_keep=torch.tensor(keep, device=self.device),
                use_cache=False,
            ).logits[0]
            if logits.shape[0] != len(keep):  # a forward that ignores logits_to_keep
                logits = logits[keep]
            log_probs = F.log_softmax(logits.float(), dim=-1).cpu()
            seconds = time.perf_counter() - started
            for i, _ in chunk:
                context_ids, cont_ids = pairs[i]
                rows = log_probs[[row_of[node] for node in scored_nodes[i]]]
                yield i, _pick(rows, cont_ids, len(context_ids), seconds, len(chunk))

    @torch.inference_mode()
    def _score_rows(
        self, inputs: list[list[int]], keep: list[int]
    ) -> list[tuple[torch.Tensor, float, int]]:
        """Log-softmax over the last keep[i] positions of each input, left-padded
        batches; with each, the batch's wall time and its number."""
        out: list[tuple[torch.Tensor, float, int] | None] = [None] * len(inputs)
        lengths = [len(x) for x in inputs]
        size = self.spec.generation.batch_size
        size = size if isinstance(size, int) else 64
        for number, batch in enumerate(length_sorted_batches(lengths, size, LOGLIK_TOKEN_BUDGET)):
            width = max(lengths[i] for i in batch)
            k = max(keep[i] for i in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, width - lengths[index] :] = torch.tensor(inputs[index])
                mask[row, width - lengths[index] :] = 1
            # Left padding shifts real tokens right; positions must count real tokens only.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            started = time.perf_counter()
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                logits_to_keep=k,
                use_cache=False,
            ).logits[:, -k:]  # also where a forward ignores logits_to_keep
            log_probs = F.log_softmax(logits.float(), dim=-1).cpu()
            seconds = time.perf_counter() - started
            for row, index in enumerate(batch):
                out[index] = (log_probs[row, k - keep[index] :], seconds, number)
        return [o for o in out if o is not None]

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[RollingResult]:
        """Sum of log-probs of every token of each text, as lm-eval's rolling windows:
        the first token is predicted from the prefix token, and a text longer than the
        window is scored in windows of ``window`` tokens advancing by ``stride``, each
        token scored once, with the overlap serving as context."""
        results = []
        for request in requests:
            tokens = self.encode(request.text)
            if not tokens:
                results.append(RollingResult(0.0, 0, error="empty text"))
                continue
            window = min(request.window or self.max_length, self.max_length)
            stride = min(request.stride or window, window)
            sequence = [self.prefix_token_id, *tokens]
            inputs, keeps = [], []
            # Targets are sequence[1..n]; a chunk scores targets (done, until] from the
            # window of at most `window` tokens that ends just before `until`.
            done, n = 0, len(tokens)
            while done < n:
                until = min(done + (window if done == 0 else stride), n)
                inputs.append(sequence[max(0, until - window) : until])
                keeps.append(until - done)
                done = until
            started = time.perf_counter()
            rows = self._score_rows(inputs, keeps)
            total = 0.0
            target_start = 1
            for (log_probs, _, _), keep in zip(rows, keeps, strict=True):
                target = torch.tensor(sequence[target_start : target_start + keep])
                total += float(log_probs.gather(1, target[:, None]).sum())
                target_start += keep
            results.append(
                RollingResult(total, len(tokens), batch_seconds=time.perf_counter() - started)
            )
        return results


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _pack_rows(sequences: list[tuple[int, ...]], budget: int):
    """Rows of ``(index, shared)``: the sequences in lexicographic order (the depth-first
    order of their prefix tree), cut where a row's tree would pass ``budget`` nodes,
    each with the tokens it shares with the one before it in its row; a sequence adds
    its length minus that to its row's tree. A sequence longer than the budget is a
    row alone (with the sequences that add nothing to it)."""
    row: list[tuple[int, int]] = []
    size = 0
    for i in sorted(range(len(sequences)), key=sequences.__getitem__):
        shared = _common_prefix(sequences[row[-1][0]], sequences[i]) if row else 0
        new = len(sequences[i]) - shared
        if new and row and size + new > budget:
            yield row
            row, size, shared, new = [], 0, 0, len(sequences[i])
        row.append((i, shared))
        size += new
    if row:
        yield row


def _pick(
    scored: torch.Tensor, cont_ids: list[int], context_len: int, seconds: float, size: int
) -> LoglikelihoodResult:
    """Log-prob and greedy flag of ``cont_ids`` from the rows of log-probs predicting them."""
    target = torch.tensor(cont_ids)
    return LoglikelihoodResult(
        logprob=float(scored.gather(1, target[:, None]).sum()),
        is_greedy=bool((scored.argmax(dim=-1) == target).all()),
        continuation_tokens=len(cont_ids),
        context_tokens=context_len,
        batch_seconds=seconds,
        batch_size=size,
    )


def create(spec: RunSpec) -> HFBackend:
    return HFBackend(spec)
