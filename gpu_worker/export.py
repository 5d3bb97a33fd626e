"""A raw training checkpoint (a ``state_dict`` file and a small config) to a Hugging Face
``LlamaForCausalLM`` directory (safetensors, config, the training tokenizer).

Strict by design: a checkpoint whose weights do not fit its config does not "load
successfully" with ``strict=False`` and then give nonsense. Every key of the state_dict,
after the optional rename map, must be a parameter of the model the config describes,
every parameter must be present, every shape must match; otherwise the error lists the
unmatched, missing and mis-shaped keys and nothing is written. The tokenizer's vocabulary
must fit the config's vocab size, and special token ids the config names must be the
tokenizer's.

The config (TOML or JSON)::

    vocab_size = 49152
    hidden_size = 576
    intermediate_size = 1536        # optional: taken from the MLP weights when absent
    num_layers = 30
    num_heads = 9
    num_kv_heads = 3
    rope_theta = 100000.0
    rope_scaling = { type = "linear", factor = 2.0 }   # optional
    context_length = 2048
    tie_embeddings = true
    rms_norm_eps = 1e-5             # optional
    bos_token_id = 1                # optional: checked against the tokenizer
    eos_token_id = 2                # optional
    [rename]                        # optional: regex -> replacement, applied in order
    "^tok_embeddings\\." = "model.embed_tokens."

Keys are Hugging Face's Llama names (``model.layers.0.self_attn.q_proj.weight``); a
rename map maps other naming schemes onto them. It only renames: fused projections (one
``qkv`` matrix) or Meta's interleaved rotary layout are not converted.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from shared.errors import TandemError
from shared.jsonl import decode_utf8

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class CheckpointConfig(BaseModel):
    """What a raw checkpoint's weights are: the architecture, in the terms users know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: StrictInt = Field(ge=1)
    hidden_size: StrictInt = Field(ge=1)
    intermediate_size: StrictInt | None = Field(None, ge=1)
    num_layers: StrictInt = Field(ge=1)
    num_heads: StrictInt = Field(ge=1)
    num_kv_heads: StrictInt | None = Field(None, ge=1)
    head_dim: StrictInt | None = Field(None, ge=1)
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    context_length: StrictInt = Field(ge=1)
    tie_embeddings: StrictBool = False
    rms_norm_eps: float = 1e-5
    bos_token_id: StrictInt | None = None
    eos_token_id: StrictInt | None = None
    rename: dict[str, str] = Field(default_factory=dict)


def read_config(path: str | Path) -> CheckpointConfig:
    path = Path(path)
    try:
        text = decode_utf8(path.read_bytes(), path)
    except OSError as error:
        raise TandemError(f"cannot read checkpoint config {path}: {error.strerror}") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise TandemError(
            f"{path}: not valid {path.suffix.lstrip('.').upper()}: {error}"
        ) from error
    try:
        return CheckpointConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise TandemError(f"{path}: invalid checkpoint config: {problems}") from error


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors by name from a .safetensors file or a torch file (weights only: a
    checkpoint never runs code on load)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise TandemError(f"state_dict file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise TandemError(f"cannot read the state_dict {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint wrapping its weights
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise TandemError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(state)


def llama_config(config: CheckpointConfig, intermediate_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads or config.num_heads,
        head_dim=config.head_dim or config.hidden_size // config.num_heads,
        rope_theta=config.rope_theta,
        rope_scaling=config.rope_scaling,
        max_position_embeddings=config.context_length,
        tie_word_embeddings=config.tie_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def rename_keys(state: dict[str, Any], rename: dict[str, str]) -> dict[str, Any]:
    out = {}
    for key, tensor in state.items():
        new = key
        for pattern, replacement in rename.items():
            new = re.sub(pattern, replacement, new)
        if new in out:
            raise TandemError(f"the rename map sends two keys to {new!r} (one of them {key!r})")
        out[new] = tensor
    return out


def _intermediate(config: CheckpointConfig, state: dict[str, Any]) -> int:
    if config.intermediate_size:
        return config.intermediate_size
    weight = state.get("model.layers.0.mlp.gate_proj.weight")
    if weight is None:
        raise TandemError(
            "intermediate_size is not in the config and model.layers.0.mlp.gate_proj.weight "
            "is not in the state_dict to read it from"
        )
    return int(weight.shape[0])


def check_weights(config: CheckpointConfig, state: dict[str, Any]) -> Any:
    """The model the config describes, with ``state`` loaded strictly; TandemError
    listing every unmatched, missing or mis-shaped key otherwise."""
    import torch
    from transformers import LlamaForCausalLM

    state = rename_keys(state, config.rename)
    hf_config = llama_config(config, _intermediate(config, state))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlamaForCausalLM(hf_config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        head = state.pop("lm_head.weight", None)
        embed = state.get("model.embed_tokens.weight")
        if head is not None and embed is not None and not torch.equal(head, embed):
            raise TandemError(
                "tie_embeddings = true, but lm_head.weight differs from "
                "model.embed_tokens.weight; set tie_embeddings = false"
            )
    unmatched = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    misshaped = sorted(
        f"{k}: {tuple(state[k].shape)} in the state_dict, {expected[k]} for this config"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != expected[k]
    )
    if unmatched or missing or misshaped:
        lines = ["the state_dict does not fit the checkpoint config; nothing was loaded"]
        for title, keys in (
            ("unmatched keys (not in the model)", unmatched),
            ("missing keys", missing),
            ("mis-shaped keys", misshaped),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines += [f"    {k}" for k in keys[:20]]
                if len(keys) > 20:
                    lines.append(f"    ... and {len(keys) - 20} more")
        lines.append("  (rename keys with a [rename] table of regex = replacement)")
        raise TandemError("\n".join(lines))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model = LlamaForCausalLM(hf_config)
    model.load_state_dict(state, strict=True)  # every key was checked above
    return model


def check_tokenizer(config: CheckpointConfig, tokenizer: Any) -> None:
    problems = []
    if len(tokenizer) > config.vocab_size:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size {config.vocab_size}"
        )
    for name in ("bos_token_id", "eos_token_id"):
        want = getattr(config, name)
        have = getattr(tokenizer, name)
        if want is not None and have != want:
            problems.append(f"{name} is {want} in the config but {have} in the tokenizer")
    if problems:
        raise TandemError("tokenizer and checkpoint config disagree: " + "; ".join(problems))


def export_checkpoint(
    weights: str | Path, config_path: str | Path, tokenizer_path: str | Path, target: str | Path
) -> Path:
    """Write the HF directory for a raw checkpoint to ``target`` (atomically: built in a
    hidden sibling and renamed). Returns ``target``."""
    from transformers import AutoTokenizer

    from shared import atomic

    config = read_config(config_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    except (OSError, ValueError) as error:
        raise TandemError(f"cannot load the tokenizer at {tokenizer_path}: {error}") from error
    check_tokenizer(config, tokenizer)
    model = check_weights(config, load_state_dict(weights))
    target = Path(target)
    with atomic.building_dir(target) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return target


def export_key(weights: str | Path, config_path: str | Path, tokenizer_path: str | Path) -> str:
    """A cache key for an export: the files' sizes and modification times (hashing a
    multi-GB checkpoint on every look would cost more than the export)."""
    digest = hashlib.sha256()
    for path in (Path(weights), Path(config_path)):
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(str(Path(tokenizer_path).resolve()).encode())
    return digest.hexdigest()[:24]
