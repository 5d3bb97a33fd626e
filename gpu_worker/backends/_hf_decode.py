"""The hf backend's greedy decoder: tandem's own loop over ``model(...)`` with the KV cache.

Token for token what transformers' ``generate`` gives (tests/gpu_worker/test_hf_decode.py
checks it), but faster on the batches an evaluation has: prompts are prefilled in
groups of similar length instead of padded to the batch's longest, the chat template's
system prompt goes through the model once per batch, the cache grows in place, only
the last position reaches the LM head, a row leaves the batch as soon as it ends, and a
prompt still waiting takes its slot (continuous batching).
Models the loop cannot run (encoder-decoder, caches that are not a plain
``DynamicCache``) fall back to ``generate``. The cache layer that grows in place and
the stream of rows are in ``_hf_stream``; the LM head screened in bf16, which decoding
steps use for fp32 models on CPUs with native bf16, in ``_hf_head``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from gpu_worker.backends._hf_head import ScreenedHead, screened_head
from gpu_worker.backends._hf_stream import GrowingLayer, Stream
from gpu_worker.backends.base import GenerationRequest, GenerationResult
from gpu_worker.batching import length_sorted_batches

log = logging.getLogger(__name__)

# Padded tokens per prefill pass of the greedy loop.
PREFILL_TOKEN_BUDGET = 4096

# A prompt's token ids (already cut to fit) and how many tokens were cut from its left.
Prompt = tuple[list[int], int]


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def forward_parameters(model: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of the model's forward (the base model's, under a peft wrapper);
    empty for a callable that has no ``forward`` (a test's stand-in)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = getattr(type(base), "forward", None)
    return inspect.signature(forward).parameters if forward is not None else {}


class GreedyDecoder:
    """Greedy, batched generation for one loaded transformers model.

    ``template_prefix``: the chat template's tokens before the user's message (see
    ``_shared_prefix``), [] for a model without a template. ``batch_size``: rows per
    generation batch, or "auto" to size them for the KV cache (and probe on a GPU).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        precision: str,
        eos_ids: set[int],
        max_length: int,
        batch_size: int | Literal["auto"] = "auto",
        template_prefix: Sequence[int] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.eos_ids = eos_ids
        self.max_length = max_length
        self.batch_size = batch_size
        self.template_prefix = list(template_prefix)
        parameters = forward_parameters(model)
        # Our loop needs a decoder-only model whose forward takes ``logits_to_keep`` and
        # returns a plain DynamicCache (checked at the first prefill, which turns this
        # off otherwise). Anything else keeps transformers' ``generate``.
        self.loop_supported = not getattr(
            getattr(model, "config", None), "is_encoder_decoder", False
        ) and ("logits_to_keep" in parameters)
        # transformers 5.x renamed forward's past_key_values to cache.
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        # Whether more prompts than the batch size run as one stream (off for good
        # after a stream runs out of GPU memory).
        self.streaming = True
        # Whether decoding steps take the fp32 argmax through a bf16 screen where that is
        # exact and faster (see _hf_head; tests turn it off to compare).
        self.screen = True
        # Auto batch size per 256-token length bucket, found by probing (GPU only).
        self.probed_batch: dict[int, int] = {}
        # Telemetry counters since the last take_stats(): seconds in prefill and in
        # decode steps (our loop only; generate's time is not split) and batch sizes.
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0
        self.batch_sizes: list[int] = []

    def take_stats(self) -> dict[str, Any]:
        """The telemetry counters since the last call, then reset."""
        stats = {
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "batch_sizes": self.batch_sizes,
        }
        self.prefill_seconds, self.decode_seconds, self.batch_sizes = 0.0, 0.0, []
        return stats

    def greedy_head(self) -> tuple[ScreenedHead, Any, str] | None:
        """A screened LM head for one decode, with the model body it reads and the
        body's cache argument, when this model and machine allow it
        (``screened_head``). Built anew for each decode (~30 ms for SmolLM2's head), so
        it always copies the weight as it is now."""
        if not self.screen:
            return None
        head = screened_head(self.model, self.device, self.precision)
        if head is None:
            return None
        body = self.model.model
        argument = "cache" if "cache" in forward_parameters(body) else "past_key_values"
        return head, body, argument

    def synchronize(self) -> None:
        """Wait for the GPU, so a phase's time is its own (CPU work is synchronous)."""
        if self.device == "cuda":
            torch.cuda.synchronize()

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        prompts: Sequence[Prompt],
        shared: Sequence[int] | None = None,
    ) -> list[GenerationResult]:
        """One result per request, in order; ``prompts`` are the requests' token ids.
        ``shared``: per request, how many first tokens are a prefix it declares shared
        with others (a first_n few-shot block, see GenerationRequest.prefix), 0 for
        none. Requests with the same prefix are batched together and the prefix goes
        through the model once per batch."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple[int, tuple[str, ...], tuple[int, ...]], list[int]] = {}
        for index, request in enumerate(requests):
            count = shared[index] if shared is not None and self._may_split() else 0
            head = tuple(prompts[index][0][:count])
            groups.setdefault((request.max_new_tokens, request.stop, head), []).append(index)
        for (max_new, stop, head), indices in groups.items():
            encoded = [prompts[index] for index in indices]
            lengths = [len(ids) for ids, _ in encoded]
            size = self._generation_batch_size(max(lengths) + max_new)
            order = sorted(range(len(indices)), key=lambda i: (-lengths[i], i))
            done = self._generate_group([encoded[i] for i in order], size, max_new, stop, len(head))
            for position, result in zip(order, done, strict=True):
                results[indices[position]] = result
        return [r for r in results if r is not None]

    def _generate_group(
        self, items: list[Prompt], size: int, max_new: int, stop: tuple[str, ...], declared: int
    ) -> list[GenerationResult]:
        """Results for ``items`` (longest first) in order, ``size`` rows at a time. More
        items than rows: one stream through the loop, a waiting prompt taking the slot
        of each row that ends (see _decode_greedy); batches one after another where the
        loop cannot run or the stream runs out of GPU memory."""
        if self.loop_supported and self.streaming and len(items) > size:
            streamed: list[GenerationResult] | None = None
            try:
                streamed = self._decode_greedy(items, max_new, stop, declared, slots=size)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                if not is_oom(error):
                    raise
                # Batches from now on: they halve on out-of-memory, a stream cannot.
                self.streaming = False
                log.warning("out of memory streaming %d rows; running batches instead", size)
            if streamed is not None:
                self.batch_sizes.append(size)
                return streamed
            if self.device == "cuda":  # outside the except: its traceback held the cache
                torch.cuda.empty_cache()
        results: list[GenerationResult | None] = [None] * len(items)
        for batch in length_sorted_batches([len(ids) for ids, _ in items], size):
            done = self._generate_batch([items[i] for i in batch], max_new, stop, declared)
            for index, result in zip(batch, done, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    # ---- batch size ----------------------------------------------------------------------
    def _generation_batch_size(self, longest_total: int) -> int:
        """Rows per generation batch. ``longest_total`` is the longest prompt plus
        max_new_tokens: the KV cache grows to that length, so a batch that prefills
        fine can still run out of memory 1000 tokens later."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        estimate = self._kv_batch_estimate(longest_total)
        if self.device != "cuda":
            return estimate
        return self._probe_batch_size(estimate, longest_total)

    def _probe_batch_size(self, start: int, longest_total: int) -> int:
        """On a GPU, run the worst-case shape once (``start`` rows of ``longest_total``
        tokens, cache on) and halve until it fits; the answer is kept per length
        bucket. A forward over the full length allocates the final KV cache and larger
        activations than any decoding step, so a size that passes here fits the real
        batch; an out-of-memory there anyway is still halved by _generate_batch."""
        bucket = max(longest_total, min(-(-longest_total // 256) * 256, self.max_length))
        if bucket in self.probed_batch:
            return self.probed_batch[bucket]
        size = start
        while size > 1 and not self._fits(size, bucket):
            size //= 2
        self.probed_batch[bucket] = size
        return size

    @torch.inference_mode()
    def _fits(self, size: int, length: int) -> bool:
        ids = torch.full((size, length), self.tokenizer.pad_token_id, device=self.device)
        try:
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            return True
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_oom(error):
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

    # ---- one batch -----------------------------------------------------------------------
    def _generate_batch(
        self, items: list[Prompt], max_new: int, stop: tuple[str, ...], declared: int = 0
    ) -> list[GenerationResult]:
        try:
            return self._generate_padded(items, max_new, stop, declared)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_oom(error) or len(items) == 1:
                raise
        # Halve and retry the same items: never drop a batch. Out of the except block,
        # so the failed attempt's tensors (held by its traceback) are freed first.
        if self.device == "cuda":
            torch.cuda.empty_cache()
        half = len(items) // 2
        log.warning(
            "out of memory at batch %d; retrying as %d + %d", len(items), half, len(items) - half
        )
        return self._generate_batch(items[:half], max_new, stop, declared) + self._generate_batch(
            items[half:], max_new, stop, declared
        )

    @torch.inference_mode()
    def _generate_padded(
        self, items: list[Prompt], max_new: int, stop: tuple[str, ...], declared: int = 0
    ) -> list[GenerationResult]:
        self.batch_sizes.append(len(items))
        if self.loop_supported:
            results = self._decode_greedy(items, max_new, stop, declared)
            if results is not None:
                return results
        return self._generate_with_generate(items, max_new, stop)

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

    def _shared_prefix(self, items: list[Prompt]) -> int:
        """Tokens of the chat template before the user's message (SmolLM2's system
        prompt: 24 of its ~74-token IFEval prompts) when every prompt of the batch
        starts with them: they go through the model once per batch. The split depends
        on the template only, never on the batch, so a prompt is prefilled in the same
        two passes alone and batched (bf16 and nf4 greedy text stays batch-invariant)."""
        prefix = self.template_prefix
        shared = len(prefix)
        if not self._may_split():
            return 0
        if shared and all(len(ids) > shared and ids[:shared] == prefix for ids, _ in items):
            return shared
        return 0

    def _may_split(self) -> bool:
        """nf4 on CPU: a batched row's greedy text flipped against the same prompt alone
        with the prefix split (conformance suite); quantized models prefill whole
        prompts, which keeps them batch-invariant as before."""
        return self.precision not in ("int8", "nf4")

    def _plain_cache(self, cache: Any) -> bool:
        """Whether ``cache`` is one the loop can grow in place; if not, the loop is off
        for good and ``generate`` runs instead."""
        supported = type(cache) is DynamicCache and all(
            type(layer) is DynamicLayer for layer in cache.layers
        )
        if not supported:
            self.loop_supported = False
        return supported

    def prefill(
        self, items: list[Prompt], shared: int, room: int, rows: int = 0, prefix: Any = None
    ) -> tuple[DynamicCache, torch.Tensor] | None:
        """Every prompt through the model once, merged into one cache with ``room`` free
        columns at the end. The ``shared`` first tokens common to all prompts go through
        once; the rest of each prompt goes in groups of similar length. Layout of a row:
        [shared prefix | padding | rest of its prompt]; positions count real tokens
        only, so the padding in the middle is as invisible as on the left. ``rows``: the
        buffers' rows, when more than the prompts' (free rows for later prompts).
        ``prefix``: the shared prefix's cache (one row) when already computed. None if
        the model's cache is not a plain DynamicCache."""
        pad = self.tokenizer.pad_token_id
        rests = [len(ids) - shared for ids, _ in items]
        width = shared + max(rests)
        first = torch.empty(len(items), dtype=torch.long, device=self.device)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        if shared and prefix is None:
            out = self.model(
                input_ids=torch.tensor([items[0][0][:shared]], device=self.device),
                logits_to_keep=1,
                use_cache=True,
            )
            prefix = getattr(out, self.cache_argument, None)
            if not self._plain_cache(prefix):
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
                start = DynamicCache()
                for number, layer in enumerate(prefix.layers):
                    start.update(
                        layer.keys.expand(len(group), -1, -1, -1),
                        layer.values.expand(len(group), -1, -1, -1),
                        number,
                    )
                extra[self.cache_argument] = start
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, shared:].to(self.device),
                logits_to_keep=1,
                use_cache=True,
                **extra,
            )
            cache: Any = getattr(out, self.cache_argument, None)
            if not self._plain_cache(cache):
                return None
            where = torch.tensor(group, device=self.device)
            first[where] = out.logits[:, -1].argmax(-1)
            for number, layer in enumerate(cache.layers):
                if len(keys) <= number:
                    heads = layer.keys.shape[1]
                    count = max(rows, len(items))
                    shape = (count, heads, width + room, layer.keys.shape[-1])
                    keys.append(layer.keys.new_zeros(shape))
                    shape = (count, heads, width + room, layer.values.shape[-1])
                    values.append(layer.values.new_zeros(shape))
                for buffer, states in ((keys[number], layer.keys), (values[number], layer.values)):
                    if shared:
                        buffer[where, :, :shared] = states[:, :, :shared]
                    buffer[where, :, width - g : width] = states[:, :, shared:]
        merged = DynamicCache()
        merged.layers = [
            GrowingLayer(k, v, width, len(items)) for k, v in zip(keys, values, strict=True)
        ]
        return merged, first

    @torch.inference_mode()
    def _decode_greedy(
        self,
        items: list[Prompt],
        max_new: int,
        stop: tuple[str, ...],
        declared: int = 0,
        slots: int | None = None,
    ) -> list[GenerationResult] | None:
        """Greedy decoding over ``model(...)`` with the KV cache, token for token what
        ``generate`` gives, but: prompts are prefilled without cross-group padding, the
        cache grows in place (DynamicCache concatenates: a copy of the whole cache
        every step), only the last position reaches the LM head, and a row leaves the
        batch and the cache as soon as it ends (EOS, stop string, length).

        ``slots``: rows at once (None: every item). Items beyond them wait, in the
        order given (longest first), and take the slot of a row that ends (continuous
        batching): the batch stays full instead of running its tail at a few rows
        while the next batch waits. A decoding step's cost grows far slower than its
        rows on this machine (the matmuls: 45 ms at 1 row, 133 ms at 62), so the steps
        saved are the gain; a joining row pays its padding up to the oldest row's
        length in attention. ``declared``: the items' shared prefix (see
        generate), else the chat template's. None if the model's cache is not a plain
        DynamicCache (generate runs instead)."""
        started = time.perf_counter()
        stream = Stream(self, items, max_new, stop, declared or self._shared_prefix(items))
        slots = len(items) if slots is None else max(1, min(slots, len(items)))
        while True:
            if stream.active:
                stream.keep(stream.check(stream.active, stream.tokens.tolist()))
            if not stream.admit(slots):
                return None
            if not stream.active:
                break
            stream.step()
        self.synchronize()
        seconds = time.perf_counter() - started
        self.prefill_seconds += stream.prefill_seconds
        self.decode_seconds += seconds - stream.prefill_seconds
        # A row's share of the stream: time x slots / items, so that summing
        # batch_seconds x 1 / batch_size over the rows gives the stream's time.
        share = seconds * slots / len(items)
        return [
            self._result(ids, cut, tokens, reason, stop, share, slots)
            for (ids, cut), tokens, reason in zip(
                items, stream.generated, stream.finish, strict=True
            )
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
        self, items: list[Prompt], max_new: int, stop: tuple[str, ...]
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
