"""What the builtin engine needs to know about a model's architecture, read from its HF config.

The engine runs its own forward pass (model.py) instead of HF's modules so that it controls the
KV-cache layout (one slot per sequence, see kv_cache.py) and the batch shape. That forward covers
the Llama family: Llama 1/2/3, SmolLM, Mistral and Qwen2 differ only in the details captured here.
Anything else fails at start with a message naming the architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_CONFIG_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}
_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


class UnsupportedModel(Exception):
    """The weights describe a model the builtin engine's forward pass does not implement."""


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_positions: int
    tie_word_embeddings: bool
    qkv_bias: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    inv_freq: torch.Tensor  # [head_dim / 2] float32 RoPE frequencies
    rope_scaling: float  # post-scaling of cos/sin some RoPE variants (yarn) apply

    @property
    def kv_elements_per_token(self) -> int:
        """Numbers one token occupies in the KV cache (keys and values of every layer)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def load_spec(folder: Path) -> ModelSpec:
    """Read config.json (and generation_config.json for extra EOS ids) as plain JSON, with the
    defaults transformers' config classes use for absent keys."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"cannot read the model config in {folder}: {exc}") from None
    model_type = str(raw.get("model_type", ""))
    architectures = list(raw.get("architectures") or [])
    arch = architectures[0] if architectures else _BY_MODEL_TYPE.get(model_type, model_type)
    if arch not in SUPPORTED_ARCHITECTURES or model_type not in _BY_MODEL_TYPE:
        raise UnsupportedModel(
            f"the builtin engine does not support the {arch} architecture "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    config = _Config(raw)
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(
            f"the builtin engine only supports silu MLPs, not {config.get('hidden_act')}"
        )
    try:
        num_heads = int(config.get("num_attention_heads"))
        hidden = int(config.get("hidden_size"))
        head_dim = int(config.get("head_dim") or hidden // num_heads)
        inv_freq, scaling = _rope(config, head_dim)
        eos = set(_ids(config.get("eos_token_id")))
        try:
            generation = json.loads((folder / "generation_config.json").read_text())
            eos |= set(_ids(generation.get("eos_token_id")))
        except (OSError, ValueError):
            pass  # no generation_config.json: the model config's EOS is all there is
        max_positions = int(config.get("max_position_embeddings", 2048))
        window = config.get("sliding_window")
        if arch == "MistralForCausalLM" and window:
            # Sliding-window attention is not implemented; within the window full attention
            # is exact, so the context is capped there instead of silently diverging past it.
            max_positions = min(max_positions, int(window))
        return ModelSpec(
            architecture=arch,
            vocab_size=int(config.get("vocab_size")),
            hidden_size=hidden,
            num_layers=int(config.get("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=head_dim,
            intermediate_size=int(config.get("intermediate_size")),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            max_positions=max_positions,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=arch == "Qwen2ForCausalLM" or bool(config.get("attention_bias", False)),
            eos_token_ids=tuple(sorted(eos)),
            bos_token_id=config.get("bos_token_id"),
            inv_freq=inv_freq,
            rope_scaling=scaling,
        )
    except (TypeError, ValueError) as exc:
        raise UnsupportedModel(f"the model config in {folder} is incomplete: {exc}") from None


class _Config:
    """config.json as read; a key set to null counts as absent, like in transformers."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def get(self, name: str, default: Any = None) -> Any:
        value = self.raw.get(name)
        return default if value is None else value


def _rope(config: _Config, head_dim: int) -> tuple[torch.Tensor, float]:
    # Newer configs say rope_parameters, older ones rope_theta + rope_scaling.
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_type = params.get("rope_type") or params.get("type") or "default"
    theta = float(params.get("rope_theta") or config.get("rope_theta", 10000.0))
    if rope_type == "default":
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
        return 1.0 / (theta**exponents), 1.0
    if rope_type == "dynamic":
        # Rescales with the running length, which one shared cos/sin table cannot do.
        raise UnsupportedModel("the builtin engine does not support rope_type 'dynamic'")
    # Scaled variants (llama3, linear, yarn, ...): transformers has the formulas.
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise UnsupportedModel(f"the builtin engine does not support rope_type {rope_type!r}")
    config_class = getattr(transformers, _CONFIG_CLASSES[str(config.get("model_type"))])
    hf_config = config_class(**config.raw)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config)
    return inv_freq.float(), float(scaling)
