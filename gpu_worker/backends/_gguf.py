"""A .gguf file as llama.cpp reads it: where it is, its own tokenizer and chat
template, and its quantization. Used by the llamacpp backend; imports no engine."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from gpu_worker.models import embedded_gguf
from shared.errors import TandemError
from shared.spec import EMBEDDED_MODEL

# general.file_type values, for when the gguf package is missing.
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1"}


def gguf_path(model: str) -> str:
    """The .gguf to load: the embedded SmolLM2's, or a path ending in .gguf."""
    if model == EMBEDDED_MODEL:
        return str(embedded_gguf())
    if not model.endswith(".gguf"):
        raise TandemError(
            f"backend 'llamacpp' runs .gguf files, not {model!r}; give the path of a .gguf "
            f"or {EMBEDDED_MODEL!r}, or use backend = 'hf' for a hub id or HF directory"
        )
    path = Path(model).expanduser()
    if not path.is_file():
        raise TandemError(f"model file {path} does not exist")
    return str(path)


class GgufVocab:
    """The GGUF's own tokenizer and chat template, shaped like the parts of a Hugging
    Face tokenizer that ``gpu_worker.tokens`` reads (chat_template, bos/eos ids,
    apply_chat_template)."""

    def __init__(self, llama_cpp: Any, model: Any):
        self._llama_cpp = llama_cpp
        self._vocab = model.vocab
        self._model = model
        meta = model.metadata()
        self.chat_template: str = meta.get("tokenizer.chat_template", "")
        bos, eos = model.token_bos(), model.token_eos()
        self.bos_token_id: int | None = bos if bos >= 0 else None
        self.eos_token_id: int = eos
        self.bos_token = self.piece(bos) if bos >= 0 else ""
        self.eos_token = self.piece(eos)

    def piece(self, token: int) -> str:
        return self.decode([token], special=True)

    def encode(self, text: str) -> list[int]:
        # special=True: "<|im_start|>" in a rendered chat prompt is the control token,
        # as a Hugging Face tokenizer parses it; no BOS added (tandem and lm-eval encode
        # causal-LM inputs without it).
        if not text:
            return []
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids: list[int], special: bool = False) -> str:
        """Text of ``ids``; control tokens dropped unless ``special``. A cut-off UTF-8
        character becomes U+FFFD, as transformers decodes it."""
        if not ids:
            return ""
        llama_cpp = self._llama_cpp
        array = (llama_cpp.llama_token * len(ids))(*ids)
        size = 16 * len(ids) + 64
        for _ in range(2):
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(
                self._vocab, array, len(ids), buffer, size, False, special
            )
            if n >= 0:
                return buffer.raw[:n].decode("utf-8", errors="replace")
            size = -n + 1
        raise TandemError(f"llama.cpp could not detokenize {len(ids)} tokens")

    def is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt=True
    ) -> str:
        """The template rendered as transformers renders it (sandboxed jinja2, trimmed
        blocks), so hf and llamacpp prompts are the same text."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TandemError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


def file_type(metadata: dict[str, str]) -> str:
    """The GGUF's quantization as llama.cpp names it (general.file_type)."""
    raw = metadata.get("general.file_type", "")
    try:
        code = int(raw)
    except ValueError:
        return "unknown"
    try:
        from gguf import LlamaFileType

        return LlamaFileType(code).name.removeprefix("MOSTLY_")
    except (ImportError, ValueError):
        return _FILE_TYPES.get(code, f"type {code}")
