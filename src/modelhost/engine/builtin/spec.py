"""What the builtin engine needs to know about a model's architecture, read from its HF config.

The engine runs its own forward pass (model.py) instead of HF's modules so that it controls the
KV-cache layout (one slot per sequence, see kv_cache.py) and the batch shape. That forward covers
the Llama family: Llama 1/2/3, SmolLM, Mistral and Qwen2 differ only in the details captured here.
Anything else fails at start with a message naming the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
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
    """Read config.json (and generation_config.json for extra EOS ids) through transformers,
    which normalises the many spellings of RoPE settings across model generations."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedModel(f"cannot read the model config in {folder}: {exc}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    model_type = str(getattr(config, "model_type", ""))
    arch = architectures[0] if architectures else _BY_MODEL_TYPE.get(model_type, model_type)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"the builtin engine does not support the {arch} architecture "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModel(
            f"the builtin engine only supports silu MLPs, not {config.hidden_act}"
        )
    num_heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
    inv_freq, scaling = _rope(config, head_dim)
    eos = set(_ids(getattr(config, "eos_token_id", None)))
    try:
        gen = GenerationConfig.from_pretrained(str(folder))
        eos |= set(_ids(gen.eos_token_id))
    except OSError:
        pass  # no generation_config.json: the model config's EOS is all there is
    max_positions = int(getattr(config, "max_position_embeddings", 2048))
    window = getattr(config, "sliding_window", None)
    if arch == "MistralForCausalLM" and window:
        # Sliding-window attention is not implemented; within the window full attention is
        # exact, so the context is capped there instead of silently diverging past it.
        max_positions = min(max_positions, int(window))
    return ModelSpec(
        architecture=arch,
        vocab_size=int(config.vocab_size),
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        intermediate_size=int(config.intermediate_size),
        rms_norm_eps=float(config.rms_norm_eps),
        max_positions=max_positions,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(getattr(config, "attention_bias", False)),
        eos_token_ids=tuple(sorted(eos)),
        bos_token_id=getattr(config, "bos_token_id", None),
        inv_freq=inv_freq,
        rope_scaling=scaling,
    )


def _rope(config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
        return 1.0 / (theta**exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
        # "dynamic" rescales with the running length, which a shared cos/sin table cannot do.
        raise UnsupportedModel(f"the builtin engine does not support rope_type {rope_type!r}")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
    return inv_freq.float(), float(scaling)
