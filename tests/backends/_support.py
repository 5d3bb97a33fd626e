"""Test helpers: a tiny LoRA adapter for the embedded model, made on the fly (nothing to
download), and what the machine can run.

B is initialised non-zero (peft's default is zero, which would make the adapter a
no-op and every LoRA test pass vacuously), so outputs really change.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_lora(base_dir: Path, out: Path, base_name: str, rank: int = 8, seed: int = 0) -> Path:
    """Save a random rank-``rank`` LoRA on q/v projections of ``base_dir`` to ``out``,
    with ``base_model_name_or_path = base_name``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.08)
    peft_model.save_pretrained(out)
    config_file = out / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data["base_model_name_or_path"] = base_name
    config_file.write_text(json.dumps(data, indent=2))
    return out


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def llamacpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def cuda_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def bnb_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None
