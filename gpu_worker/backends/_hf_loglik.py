"""The hf backend's log-likelihood scorer: packed prefix trees, plain rows, rolling windows.

Requests are packed into prefix trees: a prefix shared by several requests (the context
of every choice of a question, the few-shot block of one subject) runs through the
model once, rows carry no padding, and only the positions that are scored go through
the LM head: a 5-shot MMLU prompt is ~700 tokens and full-vocabulary logits for all of
them would cost ~140 MB per row for nothing. What cannot be packed runs as lm-eval runs
it, one left-padded row per request.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from gpu_worker import tokens as token_rules
from gpu_worker.backends._hf_decode import forward_parameters
from gpu_worker.backends.base import LoglikelihoodResult, RollingResult
from gpu_worker.batching import length_sorted_batches

# Padded tokens per log-likelihood forward pass; bounds activation memory on CPU.
LOGLIK_TOKEN_BUDGET = 8192
# Longest sequence packed (its row's mask is length^2: 8192 tokens -> 256 MB in fp32);
# longer ones run as plain causal rows.
PACK_DEPTH_LIMIT = 8192

# Layer kinds a packed row's custom mask describes exactly (config.layer_types).
ATTENTION_LAYERS = frozenset({"full_attention", "sliding_attention"})

# A request's (context token ids, continuation token ids), split by lm-eval's rule.
Pair = tuple[list[int], list[int]]


class LoglikelihoodScorer:
    """Log-probs of token sequences under one loaded transformers model.

    ``batch_size``: rows per plain (unpacked) forward. ``pack``: False scores every
    request as a plain row (unsloth: its attention kernels may build their own mask).
    ``pack_tokens``: tokens per packed row; None sizes rows for the model and device.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str,
        pad_id: int,
        prefix_id: int,
        max_length: int,
        batch_size: int = 64,
        pack: bool = True,
        pack_tokens: int | None = None,
    ):
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.prefix_id = prefix_id
        self.max_length = max_length
        self.batch_size = batch_size
        self.pack = pack
        config = getattr(model, "config", None)
        hidden = int(getattr(config, "hidden_size", 1024) or 1024)
        if pack_tokens is None:
            # Attention over a row costs ~row/(6 x hidden size) of the linear layers per
            # token, so rows near the hidden size keep it a small share; GPUs want longer
            # rows to stay busy.
            floor, ceiling = (2048, 8192) if device == "cuda" else (512, 2048)
            pack_tokens = max(floor, min(ceiling, hidden))
        self.pack_tokens = pack_tokens
        # One query-key pair of attention relative to one token through the linear
        # layers (~4 x hidden FLOPs a layer against ~24 x hidden^2).
        self.pair_cost = 1 / (6 * hidden)
        # transformers 5.x renamed forward's past_key_values to cache.
        self.cache_argument = "cache" if "cache" in forward_parameters(model) else "past_key_values"

    @property
    def packing_depth(self) -> int:
        """Longest sequence a packed row may hold: the position window, or the sliding
        window where a model has one (a custom mask replaces transformers' own, so the
        window must never bind), and at most PACK_DEPTH_LIMIT (the mask is row x row);
        0 where the attention kernel takes no custom mask, where a layer is not
        attention (a recurrent state would run through sibling branches one after
        another) and where the rotary frequencies depend on the longest position in the
        forward (``dynamic``, ``longrope``: a packed row's would differ from each
        request's own). Read from the model's config on each call: the kernel can be
        switched after loading."""
        if not self.pack:
            return 0
        config = self.model.config
        if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
            return 0
        layer_types = getattr(config, "layer_types", None) or ()
        if any(kind not in ATTENTION_LAYERS for kind in layer_types):
            return 0
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
        if isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type")) in (
            "dynamic",
            "longrope",
        ):
            return 0
        depth = min(self.max_length, PACK_DEPTH_LIMIT)
        window = getattr(config, "sliding_window", None)
        if isinstance(window, int) and window > 0:
            return min(depth, window)
        return depth

    def loglikelihood(self, pairs: list[Pair]) -> list[LoglikelihoodResult]:
        """Sum of log-probs of each continuation given its context, and whether every
        continuation token is the greedy one; one result per pair, in order.

        Pairs are packed (see ``_packed_rows``): every distinct prefix -- a question's
        context shared by its choices, a few-shot block shared by the questions of one
        subject -- runs through the model once, with no padding. A pair too long for
        the window (its context is cut on the left, as lm-eval does) is one full row of
        its own.
        """
        results: list[LoglikelihoodResult | None] = [None] * len(pairs)
        packed: list[int] = []
        rows_for: list[int] = []
        depth = self.packing_depth
        for index, (context_ids, cont_ids) in enumerate(pairs):
            if not cont_ids:
                results[index] = LoglikelihoodResult(0.0, True, 0, error="empty continuation")
            elif len(context_ids) + len(cont_ids) - 1 <= depth:
                packed.append(index)
            else:
                rows_for.append(index)
        for index, result in self._plain_rows([pairs[i] for i in rows_for]):
            results[rows_for[index]] = result
        for index, result in self._packed_rows([pairs[i] for i in packed]):
            results[packed[index]] = result
        return [r for r in results if r is not None]

    def rolling(self, tokens: list[int], window: int | None, stride: int | None) -> RollingResult:
        """Sum of log-probs of every token of a text, as lm-eval's rolling windows (see
        ``gpu_worker.tokens.rolling_windows``): the first token is predicted from the
        prefix token, each token is scored once."""
        if not tokens:
            return RollingResult(0.0, 0, error="empty text")
        sequence = [self.prefix_id, *tokens]
        windows = token_rules.rolling_windows(len(tokens), self.max_length, window, stride)
        inputs = [sequence[start:until] for start, _, until in windows]
        keeps = [until - done for _, done, until in windows]
        started = time.perf_counter()
        rows = self._forward_rows(inputs, keeps)
        total = 0.0
        target_start = 1
        for (log_probs, _, _), keep in zip(rows, keeps, strict=True):
            target = torch.tensor(sequence[target_start : target_start + keep])
            total += float(log_probs.gather(1, target[:, None]).sum())
            target_start += keep
        return RollingResult(total, len(tokens), batch_seconds=time.perf_counter() - started)

    def _plain_rows(self, pairs: list[Pair]) -> Iterator[tuple[int, LoglikelihoodResult]]:
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
        row_logprobs = self._forward_rows(row_inputs, row_keep)
        # batch_size counts the requests a forward served (rows are shared).
        served = Counter(row_logprobs[row][2] for row, _, _ in plans)
        for index, (row, cont_ids, context_len) in enumerate(plans):
            log_probs, seconds, batch = row_logprobs[row]
            # The last positions predict the continuation.
            scored = log_probs[-len(cont_ids) :]
            yield index, _pick(scored, cont_ids, context_len, seconds, served[batch])

    @torch.inference_mode()
    def _packed_rows(self, pairs: list[Pair]) -> Iterator[tuple[int, LoglikelihoodResult]]:
        """Every request's input (context + continuation minus its last token) goes into
        a prefix tree; a tree is laid out in one row in depth-first order, each token
        attending to its ancestors only and positioned at its depth. A shared prefix is
        then computed once, no row is padded, and only the positions that predict a
        continuation token go through the LM head. Exact: each token sees precisely
        its own sequence, as in a plain forward."""
        sequences = [tuple(context + cont[:-1]) for context, cont in pairs]
        dtype = self.model.get_input_embeddings().weight.dtype
        for chunk in _pack_rows(sequences, self.pack_tokens, self.pair_cost):
            started = time.perf_counter()
            tokens: list[int] = []
            depth: list[int] = []
            end: list[int] = []
            scored_nodes: dict[int, list[int]] = {}
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
            # The trunk: the nodes every sequence of the row starts with (a few-shot block).
            trunk = min([len(sequences[chunk[0][0]])] + [shared for _, shared in chunk[1:]])
            logits = self._tree_forward(tokens, depth, end, keep, trunk, dtype)
            log_probs = F.log_softmax(logits.float(), dim=-1).cpu()
            seconds = time.perf_counter() - started
            for i, _ in chunk:
                context_ids, cont_ids = pairs[i]
                rows = log_probs[[row_of[node] for node in scored_nodes[i]]]
                yield i, _pick(rows, cont_ids, len(context_ids), seconds, len(chunk))

    def _tree_forward(
        self,
        tokens: list[int],
        depth: list[int],
        end: list[int],
        keep: list[int],
        trunk: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Logits at the ``keep`` nodes of one packed tree (``end[j]``: one past node j's
        last descendant). Its trunk, when long enough to matter, runs as a plain causal
        sequence (no mask: the attention kernel's fast causal path) whose KV cache the
        rest then attends to, about BRANCH_TOKENS nodes at a time on CPU (a row's
        budget on a GPU, which wants long forwards): each group runs with a mask of
        group x (trunk + group), and the cache goes back to the trunk after it. The CPU
        attention kernel computes every pair of its mask, masked or not, so a
        1,440-token few-shot block with eight questions (2,150 nodes) behind it costs
        about 2,160 x 1,800 pairs this way and 2,150 x 3,600 as one masked forward. A
        group starts where the tree is shallow (between questions) and runs again the
        few nodes between the trunk and its first node that it needs."""
        if trunk < MIN_SHARED:
            trunk = 0
        ids = torch.tensor(tokens, device=self.device)
        positions = torch.tensor(depth, device=self.device)
        ends = torch.tensor(end, device=self.device)
        everything = torch.arange(len(tokens), device=self.device)
        if not trunk:
            return self._masked(ids, positions, ends, 0, everything, keep, None, dtype)
        head = [node for node in keep if node < trunk]
        out = self.model(
            input_ids=ids[None, :trunk],
            position_ids=positions[None, :trunk],
            logits_to_keep=torch.tensor(head or [trunk - 1], device=self.device),
            use_cache=trunk < len(tokens),
        )
        pieces = [_kept(out.logits[0], head)] if head else []
        if trunk == len(tokens):
            return pieces[0]
        cache = getattr(out, self.cache_argument, None)
        saved = _trunk_state(cache, trunk)
        if saved is None:
            # A cache the rest cannot simply extend: the whole row, masked.
            return self._masked(ids, positions, ends, 0, everything, keep, None, dtype)
        size = BRANCH_TOKENS if self.device == "cpu" else self.pack_tokens
        for start, stop in _branch_groups(depth, trunk, size):
            _restore(cache, saved, trunk)
            # Nodes before the group that its nodes descend from: the ancestors of its
            # first node below the trunk (j < start <= i < end[j] puts start in j's subtree).
            before = torch.nonzero(ends[trunk:start] > start).flatten() + trunk
            nodes = torch.cat([before, everything[start:stop]])
            tail = [node for node in keep if start <= node < stop]
            pieces.append(self._masked(ids, positions, ends, trunk, nodes, tail, cache, dtype))
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def _masked(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        ends: torch.Tensor,
        trunk: int,
        nodes: torch.Tensor,
        keep: list[int],
        cache: Any,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Logits at the ``keep`` nodes of one forward of ``nodes`` (ascending, each
        with its ancestors after the trunk), the first ``trunk`` nodes in ``cache``."""
        keys = torch.cat([torch.arange(trunk, device=self.device), nodes])
        # Node i sees node j when j is i or an ancestor: j <= i < end[j]. Every trunk
        # node is an ancestor of every other node.
        visible = (keys[None, :] <= nodes[:, None]) & (nodes[:, None] < ends[keys][None, :])
        mask = torch.full(visible.shape, torch.finfo(dtype).min, dtype=dtype, device=self.device)
        mask.masked_fill_(visible, 0.0)
        del visible
        wanted = torch.searchsorted(
            nodes, torch.tensor(keep, dtype=nodes.dtype, device=self.device)
        )
        out = self.model(
            input_ids=ids[None, nodes],
            position_ids=positions[None, nodes],
            attention_mask=mask[None, None],
            logits_to_keep=wanted,
            use_cache=cache is not None,
            **({self.cache_argument: cache} if cache is not None else {}),
        )
        return _kept(out.logits[0], wanted.tolist())

    @torch.inference_mode()
    def _forward_rows(
        self, inputs: list[list[int]], keep: list[int]
    ) -> list[tuple[torch.Tensor, float, int]]:
        """Log-softmax over the last keep[i] positions of each input, left-padded
        batches; with each, the batch's wall time and its number."""
        out: list[tuple[torch.Tensor, float, int] | None] = [None] * len(inputs)
        lengths = [len(x) for x in inputs]
        batches = length_sorted_batches(lengths, self.batch_size, LOGLIK_TOKEN_BUDGET)
        for number, batch in enumerate(batches):
            width = max(lengths[i] for i in batch)
            k = max(keep[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
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


# Prefixes shorter than this are not worth sharing across rows or splitting off as a
# row's trunk (a few-shot block is hundreds of tokens), and fewer nodes than this are
# cheap enough to run again at the start of a branch group.
MIN_SHARED = 32
# Branch nodes per forward against a row's trunk on CPU: fewer means less masked
# attention (each group attends to the trunk and itself only), more means fewer, larger
# matmuls; from 128 rows up the matmuls run at the same speed here.
BRANCH_TOKENS = 256


def _pack_rows(
    sequences: list[tuple[int, ...]], budget: int, pair_cost: float
) -> Iterator[list[tuple[int, int]]]:
    """Rows of ``(index, shared)``: the sequences in lexicographic order (the depth-first
    order of their prefix tree), cut where a row's tree would pass ``budget`` nodes,
    each with the tokens it shares with the one before it in its row; a sequence adds
    its length minus that to its row's tree. A sequence longer than the budget is a
    row alone (with the sequences that add nothing to it), unless it shares a long
    prefix with the row: starting a new row would run that prefix (a few-shot block)
    through the model again, so the row grows past the budget for as long as the
    attention its new nodes add costs less than that (``pair_cost``: one query-key pair
    of attention relative to one token through the linear layers), and never past
    PACK_DEPTH_LIMIT nodes."""
    row: list[tuple[int, int]] = []
    size = 0
    for i in sorted(range(len(sequences)), key=sequences.__getitem__):
        shared = token_rules.common_prefix(sequences[row[-1][0]], sequences[i]) if row else 0
        new = len(sequences[i]) - shared
        sharing = (
            shared >= max(new, MIN_SHARED)
            and size + new <= PACK_DEPTH_LIMIT
            and new * (size + new) * pair_cost < shared
        )
        if new and row and size + new > budget and not sharing:
            yield row
            row, size, shared, new = [], 0, 0, len(sequences[i])
        row.append((i, shared))
        size += new
    if row:
        yield row


def _branch_groups(depth: list[int], trunk: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of the nodes after the trunk, in depth-first order, of
    about ``size`` nodes each. Since a group's ancestors after the trunk run again with
    it, a group starts only where a sequence branches off less than MIN_SHARED nodes
    below the trunk (between questions, not within one): it ends at the last such
    branch within ``size`` nodes, or at the first one after where there is none."""
    start = last = trunk
    for node in range(trunk + 1, len(depth) + 1):
        if node < len(depth) and not depth[node] <= min(depth[node - 1], trunk + MIN_SHARED - 1):
            continue  # not a branch (its parent is the node before), or a deep one
        if node - start > size and last > start:
            yield start, last
            start = last
        if node - start > size and node < len(depth):
            yield start, node
            start = node
        last = node
    yield start, len(depth)


def _trunk_state(cache: Any, trunk: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Every layer's keys and values of the trunk, to run each group of branches
    against; None unless the cache holds them in full (none, quantized, static,
    recurrent, a sliding window already cut: the branches cannot extend it)."""
    if type(cache) is not DynamicCache:
        return None
    saved = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        plain = type(layer) in (DynamicLayer, DynamicSlidingWindowLayer)
        if not plain or keys is None or values is None or keys.shape[-2] != trunk:
            return None
        saved.append((keys, values))
    return saved


def _restore(cache: Any, saved: list[tuple[torch.Tensor, torch.Tensor]], trunk: int) -> None:
    """The cache back to the trunk: the layers grow by concatenation, so the trunk's
    tensors are intact."""
    for layer, (keys, values) in zip(cache.layers, saved, strict=True):
        layer.keys, layer.values = keys, values
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = trunk


def _kept(logits: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """The rows of ``keep`` from a forward's logits, whether or not it honoured
    ``logits_to_keep``."""
    return logits if logits.shape[0] == len(keep) else logits[keep]


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
