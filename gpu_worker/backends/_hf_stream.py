"""The greedy loop's KV cache and the stream of rows over it.

``GrowingLayer`` keeps a layer's keys and values in a buffer with free columns and rows,
so a decoding step writes in place, a row that ends hands its slot to the last row, and
a prompt that joins takes a free row. ``Stream`` is one ``GreedyDecoder._decode_greedy``
call: which item each row holds, its next token and position, when waiting prompts join
(continuous batching) and one step of the model for every row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from gpu_worker.backends._hf_decode import GreedyDecoder, Prompt

# Columns the cache grows by when a step needs more.
CACHE_GROWTH = 128
# Waiting prompts join a stream once an eighth of its slots are free (or all of them
# fit): a prefill pass streams every weight from memory like a decode step does, so
# joining one prompt at a time pays that per prompt (128 prompts through 54 slots at
# 256 tokens: 42 joins took 17.1 s of 133.9, 9 joins 14.0 s of 129.0).
JOIN_DIVISOR = 8


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of a buffer with free columns after
    them: a step writes its column in place instead of concatenating (a full copy of
    the cache per layer per step, a fifth of a decode step at 120 tokens). The buffer
    also has free rows after the batch's: a row that ends gives its slot to the last
    row (one row copied, not the whole cache), and a prompt that joins mid-stream takes
    a free row (see Stream)."""

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

    def add_rows(self, other: GrowingLayer, index: torch.Tensor, shared: int) -> None:
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


class Stream:
    """The rows of one ``GreedyDecoder._decode_greedy`` call: the item each batch row
    holds, its next token, position and padding, and the KV cache they share. A row's
    cache columns are [shared prefix | padding | its prompt | its tokens]; positions
    count real tokens only and the attention mask hides the padding, so a row that
    joins later is laid out like one prefilled with the batch, its prompt ending at the
    last column."""

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
        # The LM head screened in bf16, with the model body it reads (see _hf_head).
        self.head = decoder.greedy_head()

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
            cast(GrowingLayer, layer).move_rows(targets, sources, count)
        # Drop padding every row has once it is worth a copy of the cache.
        lead = int(self.pads.min())
        if lead >= max(16, self.cache.get_seq_length() // 8):
            for layer in self.cache.layers:
                cast(GrowingLayer, layer).drop_columns(self.shared, lead)
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
            prefilled = decoder.prefill(batch, self.shared, room, slots, self._prefix())
        else:
            prefilled = decoder.prefill(batch, self.shared, 0, prefix=self._prefix())
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
                cast(GrowingLayer, layer).add_rows(cast(GrowingLayer, new), index, self.shared)
            self.active += [joining[i] for i in going]
            self.tokens = torch.cat([self.tokens, first[index]])
            kept = [rests[i] for i in going]
            self.positions = torch.cat(
                [self.positions, self._long([self.shared + r for r in kept])]
            )
            self.pads = torch.cat([self.pads, self._long([seen - self.shared - r for r in kept])])
        decoder.synchronize()
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
            live = cast(GrowingLayer, layer)
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
        inputs = {
            "input_ids": self.tokens[:, None],
            "attention_mask": (~padding).long(),
            "position_ids": self.positions[:, None],
            "use_cache": True,
        }
        if self.head is not None:
            head, body, argument = self.head
            out = body(**inputs, **{argument: self.cache})
            self.tokens = head.argmax(out.last_hidden_state[:, -1])
        else:
            out = decoder.model(**inputs, logits_to_keep=1, **{decoder.cache_argument: self.cache})
            self.tokens = out.logits[:, -1].argmax(-1)
        self.positions = self.positions + 1
