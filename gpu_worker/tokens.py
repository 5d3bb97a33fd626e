"""Tokenizer rules every backend must share, so hf and vLLM draw the same boundaries.

Pure functions over a Hugging Face tokenizer (or an ``encode`` callable); no heavy imports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from shared.errors import TandemError


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template text ("" when it has none)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = template.get("default", "")
    return template


def chat_template_sha256(tokenizer: Any) -> str:
    template = chat_template(tokenizer)
    return hashlib.sha256(template.encode()).hexdigest() if template else ""


def render(tokenizer: Any, prompt: str, chat: bool, model: str) -> str:
    """The exact text the model sees: the chat template (add_generation_prompt) or raw."""
    if not chat:
        return prompt
    if not chat_template(tokenizer):
        raise TandemError(
            f"chat_template = 'on' but model {model} has no chat template; "
            "use chat_template = 'off' or 'auto'"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def prefix_token_id(tokenizer: Any) -> int:
    """What an empty context and a rolling text's first token are conditioned on: BOS
    when the tokenizer has one, else EOS (lm-eval's HFLM.prefix_token_id). For
    SmolLM2-Instruct these differ (<|im_start|> vs <|im_end|>): using EOS moved a short
    text's log-prob by ~0.5 nats against lm-eval's."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None else tokenizer.eos_token_id


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def split_pair(
    encode: Callable[[str], list[int]], prefix_id: int, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """lm-eval's token boundary: trailing context whitespace moves to the continuation
    (" A" and "A" are different tokens; the space belongs to the answer), the pair is
    encoded together, and the continuation is what follows the context's own tokens.
    An empty context is the prefix token."""
    stripped = context.rstrip()
    if stripped != context:
        continuation = context[len(stripped) :] + continuation
        context = stripped
    if not context:
        return [prefix_id], encode(continuation)
    whole = encode(context + continuation)
    context_ids = encode(context)
    return whole[: len(context_ids)], whole[len(context_ids) :]


def truncate_prompt(
    ids: list[int],
    empty_id: int,
    max_length: int,
    max_new_tokens: int,
    max_prompt_tokens: int | None,
) -> tuple[list[int], int]:
    """A prompt's tokens cut to fit, and how many were cut.

    The limit is ``max_prompt_tokens`` when the spec sets it, else the model's window
    minus the room the answer needs (at least one token). Tokens go from the left: the
    instruction sits at the end of a chat prompt. An empty prompt becomes ``empty_id``
    (the EOS token): a model cannot continue from nothing.
    """
    limit = max_prompt_tokens or max(1, max_length - max_new_tokens)
    if not ids:
        return [empty_id], 0
    cut = max(0, len(ids) - limit)
    return ids[cut:], cut


def rolling_windows(
    count: int, limit: int, window: int | None, stride: int | None
) -> list[tuple[int, int, int]]:
    """lm-eval's rolling windows over a text of ``count`` tokens.

    The text is scored as ``sequence = [prefix token, *tokens]``: every token once,
    the first predicted from the prefix token. A window holds at most ``window``
    tokens (the request's, capped by the model's ``limit``); the first scores a full
    window of targets, each next one ``stride`` new targets (default: the window, i.e.
    disjoint windows), with the overlap serving as context.

    Each item is ``(start, done, until)``: the model reads ``sequence[start:until]``
    and scores the targets ``sequence[done + 1 : until + 1]``, the last
    ``until - done`` positions of what it read.
    """
    window = min(window or limit, limit)
    stride = min(stride or window, window)
    plan = []
    done = 0
    while done < count:
        until = min(done + (window if done == 0 else stride), count)
        plan.append((max(0, until - window), done, until))
        done = until
    return plan
