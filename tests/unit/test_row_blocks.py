"""Row blocks (row_blocks.py): the planner as a table, and the probe against kernels whose
rounding does or does not depend on the batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelhost.engine.builtin.row_blocks import (
    CALL_COST_ROWS,
    REFERENCE,
    consistent_sizes,
    load_known,
    plan,
    run_in_blocks,
    save_known,
)

ALL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@pytest.mark.parametrize(
    ("rows", "sizes", "blocks"),
    [
        (0, ALL, ()),
        (1, ALL, (1,)),
        (16, ALL, (16,)),
        (7, ALL, (8,)),  # one padded call beats 4 + 2 + 1
        (17, ALL, (16, 1)),
        (100, ALL, (64, 32, 4)),
        (513, ALL, (512, 1)),
        (1, (8, 16, 32), (8,)),  # the smallest consistent size, padded
        (20, (8, 16, 32), (32,)),
        (40, (8, 16, 32), (32, 8)),
        (3, (1,), (1, 1, 1)),  # the fallback: one row per call
        (1100, (16,), (16,) * 69),
    ],
)
def test_plan(rows: int, sizes: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    assert plan(rows, sizes) == blocks
    assert sum(blocks) >= rows
    assert all(b in sizes for b in blocks)


def test_plan_is_never_costlier_than_one_block_per_row_or_one_padded_block() -> None:
    def cost(blocks: tuple[int, ...]) -> int:
        return len(blocks) * CALL_COST_ROWS + sum(blocks)

    for rows in range(1, 300):
        best = cost(plan(rows, ALL))
        assert best <= rows * (CALL_COST_ROWS + 1)
        assert best <= cost((min(s for s in ALL if s >= rows),))


def test_run_in_blocks_gives_what_one_call_gives_for_a_row_wise_function() -> None:
    # Small integers: every product and sum is exact, so any kernel gives the same bits.
    w = torch.randint(-8, 8, (24, 40)).double()
    calls: list[int] = []

    def apply(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x @ w.T

    x = torch.randint(-8, 8, (37, 40)).double()
    out = run_in_blocks(apply, x, (8, 16))
    assert torch.equal(out, x @ w.T)
    assert calls == list(plan(37, (8, 16)))  # every call had a checked row count


def _exact(x: torch.Tensor) -> torch.Tensor:
    """Row-wise and exact (elementwise): every row's result is independent of the block."""
    return x[:, :3] * 2.0 - x[:, 3:6]


def test_a_row_wise_kernel_accepts_every_size() -> None:
    assert consistent_sizes(_exact, 32, 3, torch.float32, torch.device("cpu")) == ALL


def test_a_kernel_that_rounds_differently_below_8_rows_is_only_used_from_8_rows() -> None:
    def apply(x: torch.Tensor) -> torch.Tensor:
        out = _exact(x)
        # Like a GEMM whose small-M kernel sums in another order: one output in a thousand
        # differs in its last bit.
        if x.shape[0] < 8:
            bump = (x[:, :1].abs() * 1e4).long() % 1000 == 0
            out = torch.where(bump, torch.nextafter(out, torch.full_like(out, 1e9)), out)
        return out

    assert consistent_sizes(apply, 32, 3, torch.float32, torch.device("cpu")) == ALL[3:]


def test_a_kernel_whose_rows_depend_on_their_position_falls_back_to_single_rows() -> None:
    def apply(x: torch.Tensor) -> torch.Tensor:
        return _exact(x) + torch.arange(x.shape[0], dtype=torch.float32)[:, None] * 1e-6

    assert consistent_sizes(apply, 32, 3, torch.float32, torch.device("cpu")) == (1,)


def test_a_kernel_that_depends_on_the_other_rows_is_refused() -> None:
    def apply(x: torch.Tensor) -> torch.Tensor:
        return _exact(x) + x.sum() * 1e-7  # a reduction across the block leaks into each row

    sizes = consistent_sizes(apply, 32, 3, torch.float32, torch.device("cpu"))
    assert sizes == (1,)
    assert REFERENCE not in sizes


def test_known_sizes_round_trip_and_a_broken_file_means_probe_again(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key.json"
    assert load_known(path) == {}
    save_known(path, {"576x1536x0x1": (2, 4, 8)})
    assert load_known(path) == {"576x1536x0x1": (2, 4, 8)}
    path.write_text("{not json")
    assert load_known(path) == {}
