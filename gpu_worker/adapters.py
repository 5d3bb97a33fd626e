"""LoRA adapters: read an adapter's config and refuse one trained on another model.

peft applies an adapter to any model whose layer names match, so a LoRA trained on
Llama-3.1-8B-Instruct loads silently onto Llama-3.1-8B and produces plausible, wrong
numbers. Two checks run before any weights load:

1. **Name.** ``base_model_name_or_path`` in adapter_config.json must name the spec's
   model. Names are compared after normalizing what does not change the weights: case,
   the organisation (``unsloth/Llama-3.1-8B`` is ``meta-llama/Llama-3.1-8B``), local
   directories (compared by their last path component), and quantization suffixes of
   pre-quantized uploads (``-bnb-4bit``, ``-unsloth-bnb-4bit``). The embedded model
   answers to ``embedded:smollm2-135m-instruct``, its hub id and its cache directory.
2. **Shape.** The adapter's LoRA matrices must fit the model's hidden size: read from
   the safetensors header, so a same-named model of another size is caught too.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from shared.errors import TandemError
from shared.spec import EMBEDDED_MODEL

EMBEDDED_ALIASES = ("HuggingFaceTB/SmolLM2-135M-Instruct", EMBEDDED_MODEL)
# Suffixes of re-uploads that hold the same weights in another storage format.
_SAME_WEIGHTS_SUFFIXES = re.compile(
    r"(-unsloth)?(-bnb)?-(4bit|8bit)$|-unsloth$|-gguf$|-awq$|-gptq(-int[48])?$|-fp8$"
)


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json that tandem uses."""

    path: Path
    base_model: str | None
    rank: int
    alpha: float
    peft_type: str
    target_modules: tuple[str, ...]


def read_adapter_config(adapter: str) -> AdapterConfig:
    """Parse ``<adapter>/adapter_config.json``; errors say which file and what is wrong."""
    path = Path(adapter).expanduser()
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise TandemError(
            f"adapter {adapter} is not a directory; give the folder peft's save_pretrained "
            "wrote (it holds adapter_config.json and adapter_model.safetensors)"
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TandemError(f"adapter {adapter} has no adapter_config.json") from error
    except (OSError, json.JSONDecodeError) as error:
        raise TandemError(f"{config_file}: cannot read adapter config: {error}") from error
    peft_type = str(data.get("peft_type", "LORA"))
    if peft_type.upper() != "LORA":
        raise TandemError(f"{config_file}: peft_type {peft_type!r} is not supported; only LORA")
    targets = data.get("target_modules") or ()
    if isinstance(targets, str):  # peft stores a regex as a plain string
        targets = (targets,)
    return AdapterConfig(
        path=path,
        base_model=data.get("base_model_name_or_path") or None,
        rank=int(data.get("r", 8)),
        alpha=float(data.get("lora_alpha", 8)),
        peft_type=peft_type,
        target_modules=tuple(str(t) for t in targets),
    )


def model_key(name: str) -> str:
    """The part of a model name that identifies its weights (see the module docstring)."""
    text = name.strip().rstrip("/\\")
    if text == EMBEDDED_MODEL or text.startswith("embedded:"):
        return text.split(":", 1)[1].lower()
    stem = re.split(r"[/\\]", text)[-1].lower()
    if stem.endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return _SAME_WEIGHTS_SUFFIXES.sub("", stem)


def names_for(model: str, load_path: str) -> set[str]:
    """Every key under which the spec's model may appear in an adapter config."""
    names = {model_key(model), model_key(load_path)}
    if model == EMBEDDED_MODEL:
        names.update(model_key(alias) for alias in EMBEDDED_ALIASES)
    return names


def check_base_model(config: AdapterConfig, model: str, load_path: str) -> None:
    """Refuse an adapter whose config names another base model than ``model``."""
    if config.base_model is None:
        # Nothing to compare by name; the shape check still runs.
        return
    base = config.base_model
    if Path(base).expanduser().resolve() == Path(load_path).expanduser().resolve():
        return
    if model_key(base) in names_for(model, load_path):
        return
    raise TandemError(
        f"adapter {config.path} was trained on {base!r} (adapter_config.json "
        f"base_model_name_or_path) but the run's model is {model!r}. A LoRA applied to "
        "another model loads without error and gives wrong numbers. Set model to the "
        "adapter's base, or, if both really hold the same weights under different names, "
        "correct base_model_name_or_path in a copy of the adapter folder."
    )


def lora_input_sizes(adapter: Path) -> dict[str, int]:
    """Input width of each ``lora_A`` matrix, read from the safetensors header only."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return {}  # a .bin adapter: peft checks shapes itself when it loads
    try:
        with weights.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TandemError(f"{weights}: not a readable safetensors file: {error}") from error
    sizes = {}
    for name, entry in header.items():
        if ".lora_A." in name and isinstance(entry, dict) and len(entry.get("shape", ())) == 2:
            sizes[name] = int(entry["shape"][1])
    return sizes


def check_shapes(config: AdapterConfig, hidden_size: int, intermediate_size: int | None) -> None:
    """Every LoRA input width must be a width the model has (hidden, MLP, or a
    projection of the hidden size such as grouped-query k/v, which LoRA never takes
    as input). A mismatch means another model size."""
    allowed = {hidden_size}
    if intermediate_size:
        allowed.add(intermediate_size)
    for name, width in lora_input_sizes(config.path).items():
        if width not in allowed:
            raise TandemError(
                f"adapter {config.path}: {name} expects inputs of width {width}, but the "
                f"model's hidden size is {hidden_size}"
                + (f" and MLP size {intermediate_size}" if intermediate_size else "")
                + f"; the adapter was trained on another model (its config says "
                f"{config.base_model!r})"
            )


def check_adapter(adapter: str, model: str, load_path: str, model_config: object) -> AdapterConfig:
    """Both checks; ``model_config`` is the base model's transformers config."""
    config = read_adapter_config(adapter)
    check_base_model(config, model, load_path)
    hidden = getattr(model_config, "hidden_size", None)
    if isinstance(hidden, int):
        inter = getattr(model_config, "intermediate_size", None)
        check_shapes(config, hidden, inter if isinstance(inter, int) else None)
    return config


def precheck_adapter(
    adapter: str, model: str, load_path: str, revision: str | None
) -> AdapterConfig:
    """``check_adapter`` against the base model's config, read before any weights load:
    a wrong base should cost a second, not a download. Every backend calls this."""
    from transformers import AutoConfig

    base_config = AutoConfig.from_pretrained(load_path, revision=revision)
    return check_adapter(adapter, model, load_path, base_config)


def merged_model_dir(load_path: str, adapter: str) -> Path:
    """The base with the adapter merged in, saved once as a plain fp32 HF directory.

    For engines that serve merged weights faster than a runtime LoRA (vLLM with
    ``merge_adapter = true``). Keyed by the adapter's files and the base's name, built
    in a temp dir and renamed, so a crash never leaves a half-written model behind.
    """
    import hashlib
    import os
    import shutil
    import tempfile

    from gpu_worker.models import cache_root

    digest = hashlib.sha256(str(Path(load_path).expanduser().resolve()).encode())
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        file = Path(adapter) / name
        if file.is_file():
            digest.update(file.read_bytes())
    target = cache_root() / "merged" / digest.hexdigest()[:24]
    if (target / "config.json").is_file():
        return target
    import torch

    from gpu_worker.precision import quiet_bitsandbytes

    quiet_bitsandbytes()  # peft imports bitsandbytes when it is installed
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        base = AutoModelForCausalLM.from_pretrained(load_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(load_path).save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
