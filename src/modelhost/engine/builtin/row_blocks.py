"""Row blocks: the row counts a linear layer may be computed with, so that a row's output has the
same bits whatever else is in the batch.

A GEMM library picks its kernel, the blocking of the reduction and the split across threads from
the shapes, so one row multiplied among 7 rows can come out with other low bits than the same row
among 16 (measured: oneDNN's bf16 kernel for a 1536-wide reduction changes from 7 rows up on an
AVX512_BF16 CPU; MKL's fp32 GEMM changes at every row count). Greedy decoding then depends on the
traffic. Instead of trusting any one CPU's kernels, the engine checks them at start:

- `consistent_sizes` probes one linear of each weight shape with random rows: every candidate row
  count whose outputs have the same bits as the reference count (16 rows), row for row, with the
  rows in another order, joins the set. A kernel whose reduction order differs from the
  reference's cannot pass: random inputs summed in two orders differ in some of the thousands of
  outputs compared. If even the reference is position-dependent, only single rows are used.
- `plan` covers any number of rows with blocks of those sizes (the last one padded with zero
  rows), so every GEMM the model runs has a checked row count.

On the CPUs measured (docs/engine-builtin.md) most shapes accept every count and the plan is one
call; the down projection in bf16 on AVX512_BF16 accepts 8 rows and up, so a single stream pads
that one projection to 8 rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REFERENCE = 16  # a typical decode batch, and a block size every GEMM library handles well
# A GEMM call costs about as much as this many extra rows (measured on the packaged model at
# 2 threads: ~6 ms per call plus ~0.5 ms per row in bf16), so padding a block by fewer rows than
# this beats splitting it.
CALL_COST_ROWS = 8
# Outputs compared per candidate size (see consistent_sizes).
PROBE_OUTPUTS = 1 << 17
# Environment variables that change which kernels oneDNN, MKL and ATen run.
_KERNEL_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "ATEN_CPU_CAPABILITY",
)


def consistent_sizes(
    apply: Callable[[torch.Tensor], torch.Tensor],
    in_features: int,
    out_features: int,
    dtype: torch.dtype,
    device: torch.device,
    candidates: tuple[int, ...] = CANDIDATES,
) -> tuple[int, ...]:
    """The candidate row counts for which `apply` gives every row the bits it gets in a block of
    REFERENCE rows, at any position. Always non-empty: (1,) when nothing else is consistent.

    Every candidate is run over the whole probe (at least PROBE_OUTPUTS outputs): a bf16 output
    hides most accumulation differences in its rounding (measured: 1 or 2 outputs in 9,216
    differ between kernels that sum in another order), so a few rows would prove nothing."""
    sizes = sorted(set(candidates) | {REFERENCE})
    needed = -(-PROBE_OUTPUTS // out_features)
    rows_for = {s: -(-max(s, needed) // s) * s for s in sizes}  # a whole number of blocks
    total = max(rows_for.values())
    total = -(-total // REFERENCE) * REFERENCE
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(total, in_features, generator=gen).to(device=device, dtype=dtype)
    reference = _blocked(apply, probe, torch.arange(total, device=device), REFERENCE)
    accepted: list[int] = []
    for size in sizes:
        # Blocks of `size` rows drawn in a shuffled order: rows sit elsewhere in their block
        # than in the reference, among other neighbours.
        order = torch.randperm(total, generator=gen)[: rows_for[size]].to(device)
        if torch.equal(_blocked(apply, probe, order, size), reference[order]):
            accepted.append(size)
    if REFERENCE not in accepted:
        return (1,)
    return tuple(s for s in accepted if s in candidates or s == REFERENCE)


def _blocked(
    apply: Callable[[torch.Tensor], torch.Tensor],
    probe: torch.Tensor,
    order: torch.Tensor,
    size: int,
) -> torch.Tensor:
    rows = order.shape[0]
    return torch.cat([apply(probe[order[i : i + size]]) for i in range(0, rows, size)])


def machine_key(dtype: torch.dtype) -> str:
    """What the probe results depend on besides the weight shape: the torch build (its oneDNN
    and MKL), the CPU and its instruction sets, the ISA caps a user may set, the thread count
    and the dtype. Results cached under this key stay valid until one of them changes."""
    cpu = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        first = text.split("\n\n", 1)[0]
        cpu = "\n".join(
            line for line in first.splitlines() if line.startswith(("model name", "flags"))
        )
    env = {k: os.environ.get(k, "") for k in _KERNEL_ENV}
    parts = [
        torch.__version__,
        torch.__config__.show(),
        platform.machine(),
        cpu,
        json.dumps(env, sort_keys=True),
        str(torch.get_num_threads()),
        str(dtype),
        str(PROBE_OUTPUTS),
        str(REFERENCE),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def load_known(path: Path) -> dict[str, tuple[int, ...]]:
    """Sizes probed earlier on this machine (see machine_key); {} when absent or unreadable."""
    try:
        raw = json.loads(path.read_text())
        return {str(k): tuple(int(s) for s in v) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_known(path: Path, found: dict[str, tuple[int, ...]]) -> None:
    """Best effort (a read-only cache only costs the next start its probe); written through a
    temp file and a rename, so concurrent replicas never read half a file."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({k: list(v) for k, v in found.items()}, sort_keys=True))
        os.replace(tmp, path)


@lru_cache(maxsize=4096)
def plan(rows: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Block sizes, in order, that cover `rows` rows; the last block may be larger than what is
    left (padded). Minimises calls * CALL_COST_ROWS + rows computed."""
    if not sizes:
        raise ValueError("sizes must not be empty")
    # cost[r], first[r]: the cheapest cover of r rows and its first block (bottom-up).
    cost = [0] * (rows + 1)
    first = [0] * (rows + 1)
    for r in range(1, rows + 1):
        options = ((CALL_COST_ROWS + s + cost[max(r - s, 0)], -s) for s in sizes)
        best_cost, neg_size = min(options)
        cost[r], first[r] = best_cost, -neg_size
    blocks: list[int] = []
    r = rows
    while r > 0:
        blocks.append(first[r])
        r = max(r - first[r], 0)
    return tuple(blocks)


def run_in_blocks(
    apply: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sizes: tuple[int, ...]
) -> torch.Tensor:
    """apply(x), computed on blocks of `sizes` rows (see `plan`)."""
    rows = x.shape[0]
    if rows in sizes:
        return apply(x)
    outputs: list[torch.Tensor] = []
    start = 0
    for size in plan(rows, sizes):
        part = x[start : start + size]
        n = part.shape[0]
        if n < size:
            part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
        outputs.append(apply(part)[:n])
        start += n
    return torch.cat(outputs)
