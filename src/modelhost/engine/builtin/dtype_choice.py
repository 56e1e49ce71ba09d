"""`--dtype auto`: the serving dtype from what the device really computes fast, with the reason.

bf16 halves the bytes every decode step reads, but a CPU only gains from it when it multiplies
bf16 natively: AMX tiles (Sapphire Rapids and later) or AVX512_BF16 dot products (Cooper Lake,
AMD Zen 4 and later). Elsewhere oneDNN still *accepts* bf16 (any AVX-512 CPU) but converts to
fp32 around every multiply: measured 2x slower than fp32 on an AVX-512 Xeon without bf16, and
3x slower per GEMM here with bf16 instructions masked off. So `auto` asks for the instructions,
not for oneDNN's willingness. `choose` and `attention_dtype` are pure; `detect_cpu` reads the
machine.

Attention is the exception: torch's bf16 attention kernel for CPUs is only fast with AMX (it
packs for AMX tiles); elsewhere it was measured 4x slower than the fp32 kernel on an AVX512_BF16
CPU, which made a bf16 model slower than an fp32 one overall. So on CPUs without AMX the KV
cache and attention stay fp32 while the linears run in bf16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# oneDNN's ONEDNN_MAX_CPU_ISA levels, lowest first (oneDNN's dnnl_cpu_isa names). An operator
# may cap oneDNN below what the CPU has; bf16 is only native if the cap allows its kernels.
_ISA_ORDER = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
)
_NATIVE_BF16_DOT = _ISA_ORDER.index("AVX512_CORE_BF16")
_NATIVE_AMX = _ISA_ORDER.index("AVX10_1_512_AMX")


@dataclass(frozen=True)
class CpuFeatures:
    amx_bf16: bool  # AMX tiles (bf16 matrix multiply)
    avx512_bf16: bool  # AVX512_BF16 dot products
    onednn_bf16: bool  # oneDNN runs bf16 at all (natively or emulated)
    isa_cap: str | None = None  # ONEDNN_MAX_CPU_ISA, when set


@dataclass(frozen=True)
class DtypeChoice:
    name: str  # "bfloat16", "float32", "float16"
    reason: str  # one line for the ready line and /stats


def _cap_allows(cap: str | None, level: int) -> bool:
    if cap is None or cap.upper() in ("ALL", "DEFAULT", ""):
        return True
    upper = cap.upper()
    if upper not in _ISA_ORDER:
        return True  # a name this table does not know: assume it is newer, not a cap below
    return _ISA_ORDER.index(upper) >= level


def choose(requested: str, device: str, cpu: CpuFeatures | None) -> DtypeChoice:
    """The dtype to serve in. `cpu` is only read for `auto` on a CPU device."""
    if requested != "auto":
        return DtypeChoice(requested, "set by --dtype")
    if device.startswith("cuda"):
        return DtypeChoice("bfloat16", "auto: CUDA computes bf16 natively")
    if cpu is None or not cpu.onednn_bf16:
        return DtypeChoice("float32", "auto: this torch build has no oneDNN bf16 kernels")
    if cpu.amx_bf16 and _cap_allows(cpu.isa_cap, _NATIVE_AMX):
        return DtypeChoice("bfloat16", "auto: the CPU multiplies bf16 natively (AMX)")
    if cpu.avx512_bf16 and _cap_allows(cpu.isa_cap, _NATIVE_BF16_DOT):
        return DtypeChoice("bfloat16", "auto: the CPU multiplies bf16 natively (AVX512_BF16)")
    if cpu.amx_bf16 or cpu.avx512_bf16:
        return DtypeChoice(
            "float32",
            f"auto: ONEDNN_MAX_CPU_ISA={cpu.isa_cap} keeps oneDNN off the CPU's bf16 "
            "instructions, where bf16 is emulated and slower than fp32",
        )
    return DtypeChoice(
        "float32",
        "auto: the CPU has no native bf16 (no AVX512_BF16 or AMX), where bf16 is emulated "
        "and slower than fp32",
    )


def attention_dtype(model_dtype: str, device: str, cpu: CpuFeatures | None) -> str:
    """The dtype of the KV cache and attention for a model served in `model_dtype`."""
    if device.startswith("cuda") or model_dtype == "float32":
        return model_dtype
    amx = cpu is not None and cpu.amx_bf16 and _cap_allows(cpu.isa_cap, _NATIVE_AMX)
    return "bfloat16" if model_dtype == "bfloat16" and amx else "float32"


def detect_cpu() -> CpuFeatures:
    import torch

    mkldnn = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return CpuFeatures(
        amx_bf16=bool(torch.cpu._is_amx_tile_supported()),
        avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),
        onednn_bf16=bool(mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
    )
