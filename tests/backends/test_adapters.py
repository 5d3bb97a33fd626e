"""LoRA adapter checks: a LoRA for another model is refused before any weights load."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpu_worker.adapters import (
    check_adapter,
    check_base_model,
    model_key,
    read_adapter_config,
)
from shared.errors import TandemError
from shared.spec import EMBEDDED_MODEL

# Where models.embedded_model_dir() puts it (a string here; nothing is read).
EMBEDDED_DIR = "/home/u/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
SMOL = SimpleNamespace(hidden_size=576, intermediate_size=1536)


def write_adapter(
    folder: Path, base: str | None, widths: dict[str, int] | None = None, **extra
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    if base is not None:
        config["base_model_name_or_path"] = base
    config.update(extra)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if widths is not None:
        # A safetensors file is an 8-byte header length, a JSON header, then the data.
        header, offset = {}, 0
        for name, width in widths.items():
            size = 8 * width * 4
            header[name] = {
                "dtype": "F32",
                "shape": [8, width],
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header).encode()
        with (folder / "adapter_model.safetensors").open("wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return folder


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
        ("unsloth/Llama-3.1-8B", "llama-3.1-8b"),
        ("unsloth/llama-3.1-8b-bnb-4bit", "llama-3.1-8b"),
        ("unsloth/Llama-3.1-8B-Instruct-unsloth-bnb-4bit", "llama-3.1-8b-instruct"),
        ("/models/Llama-3.1-8B/", "llama-3.1-8b"),
        ("/models/Llama-3.1-8B.gguf", "llama-3.1-8b"),
        (EMBEDDED_MODEL, "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
    ],
)
def test_model_key(name: str, key: str) -> None:
    assert model_key(name) == key


@pytest.mark.parametrize(
    ("adapter_base", "model"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", EMBEDDED_MODEL),  # hub id vs embedded
        (EMBEDDED_MODEL, EMBEDDED_MODEL),
        (EMBEDDED_DIR, EMBEDDED_MODEL),  # trained on the cached dequantized directory
        ("unsloth/llama-3.1-8b-bnb-4bit", "meta-llama/Llama-3.1-8B"),
    ],
)
def test_same_base_accepted(tmp_path: Path, adapter_base: str, model: str) -> None:
    config = read_adapter_config(str(write_adapter(tmp_path / "a", adapter_base)))
    load_path = EMBEDDED_DIR if model == EMBEDDED_MODEL else model
    check_base_model(config, model, load_path)


@pytest.mark.parametrize(
    ("adapter_base", "model"),
    [
        ("HuggingFaceTB/SmolLM2-360M-Instruct", EMBEDDED_MODEL),  # another size
        ("HuggingFaceTB/SmolLM2-135M", EMBEDDED_MODEL),  # base vs instruct
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
    ],
)
def test_other_base_refused(tmp_path: Path, adapter_base: str, model: str) -> None:
    config = read_adapter_config(str(write_adapter(tmp_path / "a", adapter_base)))
    load_path = EMBEDDED_DIR if model == EMBEDDED_MODEL else model
    with pytest.raises(TandemError) as error:
        check_base_model(config, model, load_path)
    message = str(error.value)
    assert adapter_base in message and model in message and "base_model_name_or_path" in message


def test_shape_mismatch_refused_even_when_names_agree(tmp_path: Path) -> None:
    folder = write_adapter(
        tmp_path / "a",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": 960},
    )
    with pytest.raises(TandemError, match="width 960.*hidden size is 576"):
        check_adapter(str(folder), EMBEDDED_MODEL, EMBEDDED_DIR, SMOL)


def test_matching_shapes_pass(tmp_path: Path) -> None:
    folder = write_adapter(
        tmp_path / "a",
        None,  # no name to compare: the shape check alone decides
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": 576,
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": 1536,
        },
    )
    config = check_adapter(str(folder), EMBEDDED_MODEL, EMBEDDED_DIR, SMOL)
    assert config.rank == 8 and config.base_model is None


def test_unreadable_adapters_explained(tmp_path: Path) -> None:
    with pytest.raises(TandemError, match="not a directory"):
        read_adapter_config(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TandemError, match="no adapter_config.json"):
        read_adapter_config(str(tmp_path / "empty"))
    write_adapter(tmp_path / "ia3", "x", peft_type="IA3")
    with pytest.raises(TandemError, match="only LORA"):
        read_adapter_config(str(tmp_path / "ia3"))


@pytest.mark.slow
def test_backend_refuses_a_mismatched_adapter_before_loading(lora_dir, tmp_path) -> None:
    """Through create_backend: the check runs before the weights load."""
    import shutil

    from gpu_worker.backends import create_backend
    from shared.spec import RunSpec

    wrong = tmp_path / "wrong-base"
    shutil.copytree(lora_dir, wrong)
    config_file = wrong / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    config_file.write_text(json.dumps(data))
    with pytest.raises(TandemError, match="was trained on 'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        create_backend(RunSpec(tasks=("ifeval",), precision="fp32", adapter=str(wrong)))
