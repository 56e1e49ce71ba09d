"""The builtin engine's own forward pass against transformers' reference implementation.

Tiny random Llama / Mistral / Qwen2 checkpoints are written to a temp dir, so this runs in
seconds and covers each architecture's differences (GQA, qkv bias, tied embeddings).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelhost.engine.builtin.kv_cache import CacheShape, SlotKVCache
from modelhost.engine.builtin.model import PrefillSpan, StepInput, load_model
from modelhost.engine.builtin.spec import UnsupportedModel, load_spec
from tests.builtin_helpers import ids, new_cache, prefill, tiny_checkpoint

ARCHS = ["llama", "mistral", "qwen2"]


@pytest.mark.parametrize("kind", ARCHS)
def test_logits_match_transformers(kind: str, tmp_path: Path) -> None:
    hf = tiny_checkpoint(kind, tmp_path)
    spec = load_spec(tmp_path)
    assert spec.qkv_bias == (kind == "qwen2")
    model = load_model(tmp_path, spec, torch.float32, "cpu")
    prompt = [5, 17, 99, 3, 42, 8, 77, 1, 2, 64, 31]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    cache = new_cache(model)
    ours = model.forward(prefill(prompt, 0, 0, 1, [len(prompt)]), cache)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_chunked_prefill_and_batched_decode_match_one_full_pass(tmp_path: Path) -> None:
    hf = tiny_checkpoint("llama", tmp_path)
    model = load_model(tmp_path, load_spec(tmp_path), torch.float32, "cpu")
    a = [5, 17, 99, 3, 42, 8, 77]
    b = [9, 9, 100, 12]
    cache = new_cache(model)
    # Slot 0 prefills `a` in two chunks; slot 1 prefills `b` meanwhile.
    model.forward(prefill(a[:4], 0, 0, 1, [4]), cache)
    model.forward(prefill(b, 1, 0, 2, [4, 4]), cache)
    model.forward(prefill(a[4:], 0, 4, 2, [7, 4]), cache)
    # One decode step for both: next tokens 11 (for a) and 13 (for b).
    step = StepInput(
        tokens=ids([11, 13]),
        positions=ids([7, 4]),
        slots=ids([0, 1]),
        adapter_rows=ids([-1, -1]),
        decode_rows=2,
        active_slots=2,
        slot_lengths=ids([8, 5]),
        prefill=(),
        sample_rows=ids([0, 1]),
    )
    out = model.forward(step, cache)
    with torch.no_grad():
        ref_a = hf(torch.tensor([[*a, 11]])).logits[0, -1]
        ref_b = hf(torch.tensor([[*b, 13]])).logits[0, -1]
    torch.testing.assert_close(out[0], ref_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], ref_b, atol=1e-4, rtol=1e-4)


def test_cache_grows_and_moves_keep_contents() -> None:
    shape = CacheShape(2, 1, 4, torch.float32, torch.device("cpu"))
    cache = SlotKVCache(shape, max_slots=16, max_length=1024)
    cache.ensure(1, 10)
    cache.keys[0][0, :10] = 1.0
    cache.values[1][0, :10] = 2.0
    cache.ensure(9, 300)
    assert cache.slot_capacity >= 9 and cache.length_capacity >= 300
    assert torch.all(cache.keys[0][0, :10] == 1.0) and torch.all(cache.values[1][0, :10] == 2.0)
    assert torch.all(cache.keys[0][0, 10:] == 0.0)
    cache.move(src=0, dst=5, length=10)
    assert torch.all(cache.values[1][5, :10] == 2.0)
    cache.release()
    assert cache.allocated_bytes == 0


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}'
    )
    with pytest.raises(UnsupportedModel, match="GPT2LMHeadModel"):
        load_spec(tmp_path)


def test_two_chunks_of_one_prompt_in_one_step(tmp_path: Path) -> None:
    hf = tiny_checkpoint("llama", tmp_path)
    model = load_model(tmp_path, load_spec(tmp_path), torch.float32, "cpu")
    prompt = [5, 17, 99, 3, 42, 8, 77, 1, 2, 64]
    step = StepInput(
        tokens=ids(prompt),
        positions=ids(list(range(10))),
        slots=ids([0] * 10),
        adapter_rows=ids([-1] * 10),
        decode_rows=0,
        active_slots=1,
        slot_lengths=ids([10]),
        prefill=(PrefillSpan(row=0, length=6, slot=0, start=0), PrefillSpan(6, 4, 0, 6)),
        sample_rows=ids(list(range(10))),
    )
    out = model.forward(step, new_cache(model))
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
