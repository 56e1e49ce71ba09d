"""Helpers shared by the builtin engine's tests: tiny random checkpoints, KV caches, steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modelhost.engine.builtin.kv_cache import CacheShape, SlotKVCache
from modelhost.engine.builtin.model import PrefillSpan, StepInput


def tiny_checkpoint(kind: str, folder: Path) -> Any:
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=kind == "qwen2",
    )
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**common)).eval()
    model.save_pretrained(str(folder))
    return model


def new_cache(model: Any, slots: int = 4, length: int = 256) -> SlotKVCache:
    s = model.spec
    shape = CacheShape(s.num_layers, s.num_kv_heads, s.head_dim, model.kv_dtype, model.device)
    cache = SlotKVCache(shape, max_slots=slots, max_length=length)
    cache.ensure(slots, length)
    return cache


def ids(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def prefill(tokens: list[int], slot: int, start: int, active: int, lengths: list[int]) -> StepInput:
    n = len(tokens)
    return StepInput(
        tokens=ids(tokens),
        positions=ids(list(range(start, start + n))),
        slots=ids([slot] * n),
        adapter_rows=ids([-1] * n),
        decode_rows=0,
        active_slots=active,
        slot_lengths=ids(lengths),
        prefill=(PrefillSpan(row=0, length=n, slot=slot, start=start),),
        sample_rows=ids(list(range(n))),
    )
