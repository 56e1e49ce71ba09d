"""`--dtype auto` as a table: what each CPU family gets, and why (dtype_choice.py)."""

from __future__ import annotations

import pytest

from modelhost.engine.builtin.dtype_choice import CpuFeatures, attention_dtype, choose

AMX = CpuFeatures(amx_bf16=True, avx512_bf16=True, onednn_bf16=True)  # Sapphire Rapids
BF16_DOT = CpuFeatures(amx_bf16=False, avx512_bf16=True, onednn_bf16=True)  # Zen 4, Cooper Lake
AVX512 = CpuFeatures(amx_bf16=False, avx512_bf16=False, onednn_bf16=True)  # Skylake/Cascade Lake
AVX2 = CpuFeatures(amx_bf16=False, avx512_bf16=False, onednn_bf16=False)  # Haswell..., Zen 2/3


@pytest.mark.parametrize(
    ("requested", "device", "cpu", "dtype", "reason_has"),
    [
        ("auto", "cpu", AMX, "bfloat16", "AMX"),
        ("auto", "cpu", BF16_DOT, "bfloat16", "AVX512_BF16"),
        # oneDNN accepts bf16 on any AVX-512 CPU but emulates it: fp32 is faster there.
        ("auto", "cpu", AVX512, "float32", "no native bf16"),
        ("auto", "cpu", AVX2, "float32", "no oneDNN bf16"),
        ("auto", "cpu", None, "float32", "no oneDNN bf16"),
        # An operator's oneDNN ISA cap below the bf16 instructions makes bf16 emulated again.
        ("auto", "cpu", CpuFeatures(True, True, True, "AVX512_CORE_VNNI"), "float32", "CPU_ISA"),
        ("auto", "cpu", CpuFeatures(True, True, True, "AVX512_CORE_BF16"), "bfloat16", "BF16"),
        ("auto", "cpu", CpuFeatures(False, True, True, "avx2"), "float32", "CPU_ISA"),
        ("auto", "cpu", CpuFeatures(True, True, True, "ALL"), "bfloat16", "AMX"),
        ("auto", "cuda", None, "bfloat16", "CUDA"),
        ("auto", "cuda:1", AVX2, "bfloat16", "CUDA"),
        ("float32", "cpu", AMX, "float32", "set by --dtype"),
        ("bfloat16", "cpu", AVX2, "bfloat16", "set by --dtype"),
        ("float16", "cuda", None, "float16", "set by --dtype"),
    ],
)
def test_auto_dtype_follows_what_the_cpu_computes_natively(
    requested: str, device: str, cpu: CpuFeatures | None, dtype: str, reason_has: str
) -> None:
    choice = choose(requested, device, cpu)
    assert choice.name == dtype
    assert reason_has in choice.reason


@pytest.mark.parametrize(
    ("model", "device", "cpu", "attention"),
    [
        ("bfloat16", "cpu", AMX, "bfloat16"),  # torch's bf16 attention kernel packs for AMX
        ("bfloat16", "cpu", BF16_DOT, "float32"),  # elsewhere it is 4x slower than fp32's
        ("bfloat16", "cpu", AVX2, "float32"),
        ("bfloat16", "cpu", CpuFeatures(True, True, True, "AVX512_CORE_BF16"), "float32"),
        ("float16", "cpu", AMX, "float32"),
        ("float32", "cpu", AMX, "float32"),
        ("bfloat16", "cuda", None, "bfloat16"),
        ("float16", "cuda", None, "float16"),
    ],
)
def test_attention_dtype(model: str, device: str, cpu: CpuFeatures | None, attention: str) -> None:
    assert attention_dtype(model, device, cpu) == attention
