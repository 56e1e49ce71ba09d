"""Small LoRA adapter folders written directly (peft's file format), for API tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

# SmolLM2-135M: hidden 576, 9 heads x 64, 3 KV heads, 30 layers.
SMOL = {"q_proj": (576, 576), "v_proj": (576, 192)}


def write_adapter(
    folder: Path,
    rank: int = 4,
    modules: dict[str, tuple[int, int]] | None = None,
    layers: int = 30,
    peft_type: str = "LORA",
) -> Path:
    modules = modules or SMOL
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": peft_type,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": sorted(modules),
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for layer in range(layers):
        for module, (fan_in, fan_out) in modules.items():
            kind = "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{kind}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, fan_in), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((fan_out, rank), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder
