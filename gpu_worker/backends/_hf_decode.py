"""The hf backend's greedy decoder: tandem's own loop over ``model(...)`` with the KV cache.

Token for token what transformers' ``generate`` gives (tests/gpu_worker/test_hf_decode.py
checks it), but faster on the batches an evaluation has: prompts are prefilled in
groups of similar length instead of padded to the batch's longest, the chat template's
system prompt goes through the model once per batch, the cache grows in place, only
the last position reaches the LM head, a row leaves the batch as soon as it ends, and a
prompt still waiting takes its slot (continuous batching).
Models the loop cannot run (encoder-decoder, caches that are not a plain
``DynamicCache``) fall back to ``generate``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from gpu_worker.backends.base import GenerationRequest, GenerationResult
from gpu_worker.batching import length_sorted_batches

log = logging.getLogger(__name__)

# Padded tokens per prefill pass of the greedy loop, and the columns the cache grows by.
PREFILL_TOKEN_BUDGET = 4096
CACHE_GROWTH = 128
# Waiting prompts join a stream once an eighth of its slots are free (or all of them
# fit): a prefill pass streams every weight from memory like a decode step does, so
# joining one prompt at a time pays that per prompt (128 prompts through 54 slots at
# 256 tokens: 42 joins took 17.1 s of 133.9, 9 joins 14.0 s of 129.0).
JOIN_DIVISOR = 8

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


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of a buffer with free columns after
    them: a step writes its column in place instead of concatenating (a full copy of
    the cache per layer per step, a fifth of a decode step at 120 tokens). The buffer
    also has free rows after the batch's: a row that ends gives its slot to the last
    row (one row copied, not the whole cache), and a prompt that joins mid-stream takes
    a free row (see _Stream)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int, rows: int = 0):
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self._keys, self._values, self._length = keys, values, length
        self._rows = rows or keys.shape[0]
        self._view()

    def _view(self) -> None:
        self.keys = self._keys[: self._rows, :, : self._length]
        self.values = self._values[: self._rows, :, : self._length]

    def update(self, key_states, value_states, *args, **kwargs):
        added = key_states.shape[-2]
        if self._length + added > self._keys.shape[-2]:
            grow = max(added, CACHE_GROWTH)
            self._keys = F.pad(self._keys, (0, 0, 0, grow))
            self._values = F.pad(self._values, (0, 0, 0, grow))
        end = self._length + added
        self._keys[: self._rows, :, self._length : end] = key_states
        self._values[: self._rows, :, self._length : end] = value_states
        self._length = end
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._rows = len(indices)
        self._view()

    def move_rows(self, targets: torch.Tensor, sources: torch.Tensor, rows: int) -> None:
        """Rows ``sources`` copied onto rows ``targets``; then the first ``rows`` rows
        are the batch."""
        if len(targets):
            self._keys[targets] = self._keys[sources]
            self._values[targets] = self._values[sources]
        self._rows = rows
        self._view()

    def add_rows(self, other: _GrowingLayer, index: torch.Tensor, shared: int) -> None:
        """Rows ``index`` of another cache laid out [shared prefix | padding | prompt],
        appended after the batch's: the prompt ends at this cache's last column, zeros
        fill the columns between. The caller checks that the prompt fits."""
        keys = other._keys[index, :, : other._length]
        values = other._values[index, :, : other._length]
        count, width = keys.shape[0], keys.shape[2]
        rows = slice(self._rows, self._rows + count)
        start = self._length - (width - shared)
        if self._rows + count > self._keys.shape[0] or start < shared:
            raise ValueError("rows do not fit the cache")
        for buffer, new in ((self._keys, keys), (self._values, values)):
            buffer[rows, :, : self._length] = 0
            buffer[rows, :, :shared] = new[:, :, :shared]
            buffer[rows, :, start : self._length] = new[:, :, shared:]
        self._rows += count
        self._view()

    def drop_columns(self, start: int, count: int) -> None:
        """Forget ``count`` columns from ``start`` on (padding no remaining row uses);
        the columns after them move left within the buffer, whose free columns stay."""
        if start == 0:
            self._keys, self._values = self._keys[:, :, count:], self._values[:, :, count:]
        else:
            live, end = slice(0, self._rows), self._length
            for buffer in (self._keys, self._values):
                buffer[live, :, start : end - count] = buffer[live, :, start + count : end].clone()
        self._length -= count
        self._view()

    def crop(self, max_length: int) -> None:  # pragma: no cover - not used by the loop
        raise NotImplementedError

    def batch_repeat_interleave(self, repeats: int) -> None:  # pragma: no cover
        raise NotImplementedError


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

    def _synchronize(self) -> None:
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

    def _prefill(
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
            _GrowingLayer(k, v, width, len(items)) for k, v in zip(keys, values, strict=True)
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
        stream = _Stream(self, items, max_new, stop, declared or self._shared_prefix(items))
        slots = len(items) if slots is None else max(1, min(slots, len(items)))
        while True:
            if stream.active:
                stream.keep(stream.check(stream.active, stream.tokens.tolist()))
            if not stream.admit(slots):
                return None
            if not stream.active:
                break
            stream.step()
        self._synchronize()
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


class _Stream:
    """The rows of one _decode_greedy call: the item each batch row holds, its next
    token, position and padding, and the KV cache they share. A row's cache columns are
    [shared prefix | padding | its prompt | its tokens]; positions count real tokens
    only and the attention mask hides the padding, so a row that joins later is laid
    out like one prefilled with the batch, its prompt ending at the last column."""

    def __init__(
        self,
        decoder: GreedyDecoder,
        items: list[Prompt],
        max_new: int,
        stop: tuple[str, ...],
        shared: int,
    ):
        self.decoder, self.items, self.max_new, self.stop = decoder, items, max_new, stop
        self.shared = shared
        self.device = decoder.device
        self.eos_ids, self.pad = decoder.eos_ids, decoder.tokenizer.pad_token_id
        # A stop string is looked for in the decoded tail only: enough tokens to hold it.
        self.window = max((len(s) for s in stop), default=0) + 4
        self.generated: list[list[int]] = [[] for _ in items]
        self.finish = ["length"] * len(items)
        self.waiting = deque(range(len(items)))
        self.active: list[int] = []  # the item each batch row holds
        self.cache: DynamicCache | None = None
        self.tokens = self._long([])  # per row: its next token, not yet checked
        self.positions = self._long([])  # per row: its real tokens so far
        self.pads = self._long([])  # per row: padding columns after the shared prefix
        self.prefill_seconds = 0.0
        self.block: DynamicCache | None = None  # the shared prefix, while no row is live

    def _long(self, values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.long, device=self.device)

    def _rest(self, item: int) -> int:
        return len(self.items[item][0]) - self.shared

    # ---- tokens ----------------------------------------------------------------------
    def check(self, items: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """Indexes of the ``items`` that go on after taking their ``tokens``; the
        others are finished (EOS, padding, a stop string, their length)."""
        return [
            i
            for i, (item, token) in enumerate(zip(items, tokens, strict=True))
            if self._take(item, token)
        ]

    def _take(self, item: int, token: int) -> bool:
        generated = self.generated[item]
        if self.max_new <= 0:  # as the loop did: no token, finished by length
            return False
        if token in self.eos_ids:
            self.finish[item] = "eos"
            return False
        if token == self.pad:
            # generate's output reads the same as a stop-string end; kept alike.
            self.finish[item] = "stop"
            return False
        generated.append(token)
        if self.stop:
            tail = self.decoder.tokenizer.decode(generated[-self.window :])
            if any(s in tail for s in self.stop):
                self.finish[item] = "stop"
                return False
        return len(generated) < self.max_new

    # ---- rows ------------------------------------------------------------------------
    def keep(self, going: list[int]) -> None:
        """Only the rows ``going`` stay: the last rows move into the slots of the rows
        that left (one row copied per leaving row), and padding columns that no row
        needs any more are dropped."""
        if len(going) == len(self.active):
            return
        count, kept = len(going), set(going)
        holes = [slot for slot in range(count) if slot not in kept]
        movers = [slot for slot in going if slot >= count]
        order = list(range(count))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        self.active = [self.active[slot] for slot in order]
        if not self.active:
            self.block = self._prefix()  # for the next prompts, if any wait
            self.cache = None
            return
        index = self._long(order)
        self.tokens, self.positions = self.tokens[index], self.positions[index]
        self.pads = self.pads[index]
        assert self.cache is not None
        targets, sources = self._long(holes), self._long(movers)
        for layer in self.cache.layers:
            cast(_GrowingLayer, layer).move_rows(targets, sources, count)
        # Drop padding every row has once it is worth a copy of the cache.
        lead = int(self.pads.min())
        if lead >= max(16, self.cache.get_seq_length() // 8):
            for layer in self.cache.layers:
                cast(_GrowingLayer, layer).drop_columns(self.shared, lead)
            self.pads -= lead

    def admit(self, slots: int) -> bool:
        """Waiting items into the free slots, longest first, each prefilled and its
        first token checked (one that ends there never takes a slot), once enough
        slots are free (JOIN_DIVISOR). An item waits while its prompt is longer than
        the rows' history (never when items come longest first). False if the model's
        cache is not one the loop can grow."""
        while self.waiting and len(self.active) < slots:
            free = slots - len(self.active)
            if self.cache is not None and free < min(len(self.waiting), slots // JOIN_DIVISOR):
                return True
            seen = self.cache.get_seq_length() if self.cache is not None else 0
            joining: list[int] = []
            while self.waiting and len(self.active) + len(joining) < slots:
                item = self.waiting[0]
                if self.cache is not None and self._rest(item) > seen - self.shared:
                    break
                joining.append(self.waiting.popleft())
            if not joining:
                return True
            if not self._join(joining, slots):
                return False
        return True

    def _join(self, joining: list[int], slots: int) -> bool:
        started = time.perf_counter()
        decoder = self.decoder
        room = min(self.max_new, CACHE_GROWTH)
        first_rows = self.cache is None
        batch = [self.items[i] for i in joining]
        if first_rows:
            prefilled = decoder._prefill(batch, self.shared, room, slots, self._prefix())
        else:
            prefilled = decoder._prefill(batch, self.shared, 0, prefix=self._prefix())
        if prefilled is None:
            if first_rows:  # no cache yet, so no row is live either
                return False
            raise RuntimeError("the model's cache changed type between prefills")
        cache, first = prefilled
        going = self.check(joining, first.tolist())
        rests = [self._rest(item) for item in joining]
        if first_rows:
            width = cache.get_seq_length()
            self.cache = cache
            self.active = list(joining)
            self.tokens = first
            self.positions = self._long([self.shared + r for r in rests])
            self.pads = self._long([width - self.shared - r for r in rests])
            self.keep(going)
        elif going:
            index = self._long(going)
            assert self.cache is not None
            seen = self.cache.get_seq_length()
            for layer, new in zip(self.cache.layers, cache.layers, strict=True):
                cast(_GrowingLayer, layer).add_rows(cast(_GrowingLayer, new), index, self.shared)
            self.active += [joining[i] for i in going]
            self.tokens = torch.cat([self.tokens, first[index]])
            kept = [rests[i] for i in going]
            self.positions = torch.cat(
                [self.positions, self._long([self.shared + r for r in kept])]
            )
            self.pads = torch.cat([self.pads, self._long([seen - self.shared - r for r in kept])])
        decoder._synchronize()
        self.prefill_seconds += time.perf_counter() - started
        return True

    def _prefix(self) -> DynamicCache | None:
        """The shared prefix's keys and values, as the live cache holds them (every
        row's first columns; kept when the last row ends): a joining prompt does not
        run it through the model again."""
        if not self.shared or self.cache is None:
            return self.block
        prefix = DynamicCache()
        for number, layer in enumerate(self.cache.layers):
            live = cast(_GrowingLayer, layer)
            prefix.update(
                live._keys[:1, :, : self.shared].clone(),
                live._values[:1, :, : self.shared].clone(),
                number,
            )
        return prefix

    def step(self) -> None:
        """One token for every row."""
        assert self.cache is not None
        decoder = self.decoder
        seen = self.cache.get_seq_length()
        columns = torch.arange(seen + 1, device=self.device)
        padding = (columns >= self.shared) & (columns < self.shared + self.pads[:, None])
        out = decoder.model(
            input_ids=self.tokens[:, None],
            attention_mask=(~padding).long(),
            position_ids=self.positions[:, None],
            logits_to_keep=1,
            use_cache=True,
            **{decoder.cache_argument: self.cache},
        )
        self.tokens = out.logits[:, -1].argmax(-1)
        self.positions = self.positions + 1
