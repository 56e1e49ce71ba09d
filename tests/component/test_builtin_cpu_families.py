"""Batch invariance with the kernels of other CPU families, checked on this machine.

oneDNN, MKL and ATen choose their kernels from the CPU's instruction sets, and each can be
capped below what the CPU has (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS,
ATEN_CPU_CAPABILITY). Under a cap the engine gets the kernels, and `--dtype auto` the choice, of
an older CPU family, so the invariance tests run here for each family this CPU can imitate: a
cap cannot add instructions, so a family above this CPU is skipped (and the test name says
which family it is). The family of this CPU itself is the plain run of the same tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.model]
ROOT = Path(__file__).resolve().parents[2]
INVARIANCE_TESTS = [
    "tests/component/test_builtin_engine.py::test_greedy_output_does_not_depend_on_the_batch",
    "tests/component/test_builtin_engine.py::test_a_row_gets_the_same_logits_in_a_batch_of_70",
    "tests/component/test_builtin_lora.py::"
    "test_adapters_answer_in_their_style_and_mixed_batches_equal_single_runs",
]
FAMILIES = {
    # Haswell to Alder Lake, AMD Zen 1 to 3: AVX2 and FMA, no AVX-512.
    "avx2_only": (
        {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        {"ATEN_CPU_CAPABILITY": "avx2"},
        torch.cpu._is_avx2_supported,
    ),
    # Skylake-SP and Cascade Lake Xeons: AVX-512 with VNNI, no AVX512_BF16, no AMX.
    "avx512_without_bf16": (
        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
        {"ATEN_CPU_CAPABILITY": "avx512"},
        torch.cpu._is_avx512_supported,
    ),
}


def _env(family: str) -> dict[str, str]:
    caps, aten, _ = FAMILIES[family]
    return {**os.environ, **caps, **aten, "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_invariance_with_the_kernels_of_an_older_cpu_family(family: str) -> None:
    if not FAMILIES[family][2]():
        pytest.skip(f"this CPU lacks the instructions of {family}; a cap cannot add them")
    env = _env(family)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from modelhost.engine.builtin.loader import pick_dtype; "
            "c = pick_dtype('auto', 'cpu'); print(c.name); print(c.reason)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    dtype, reason = probe.stdout.splitlines()[:2]
    # Neither family multiplies bf16 natively: auto must serve them in fp32.
    assert dtype == "float32", reason
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *INVARIANCE_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "3 passed" in run.stdout, run.stdout[-2000:]
