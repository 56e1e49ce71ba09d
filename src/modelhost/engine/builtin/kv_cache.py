"""Slot-based KV cache: one row ("slot") per running sequence, keys/values at their positions.

Layout per layer: [slots, length, kv_heads, head_dim], so (slot, position) pairs address rows of
a flat view and a step writes all its new keys with one index_copy_ (advanced-index assignment
into a [slots, heads, length, dim] layout was 100x slower). Attention reads it through a
transposed view. Running sequences always occupy slots
0..n-1 (the scheduler moves the last sequence into a freed slot), so decode attention reads one
contiguous block of slots with no gather, and a sequence joining or leaving never re-pads the
others. The tensors grow on demand (more slots, longer sequences) and are dropped when the
engine goes idle, so memory follows the actual load rather than max_batch_size x context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_LENGTH_STEP = 256  # grow lengths in whole steps so reallocation is rare
_SLOT_STEP = 8


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


class SlotKVCache:
    def __init__(self, shape: CacheShape, max_slots: int, max_length: int) -> None:
        self.shape = shape
        self.max_slots = max_slots
        self.max_length = max_length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slot_capacity = 0
        self.length_capacity = 0

    @property
    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def ensure(self, slots: int, length: int) -> None:
        """Make room for `slots` sequences of up to `length` tokens, keeping the contents."""
        if slots <= self.slot_capacity and length <= self.length_capacity:
            return
        new_slots = max(self.slot_capacity, min(self.max_slots, round_up(slots, _SLOT_STEP)))
        new_length = self.length_capacity
        if length > self.length_capacity:
            # Grow by half again so a long generation reallocates O(log n) times.
            wanted = max(length, self.length_capacity * 3 // 2)
            new_length = min(self.max_length, round_up(wanted, _LENGTH_STEP))
        new_slots, new_length = max(new_slots, slots), max(new_length, length)
        s = self.shape
        # Zero-filled, not empty: masked-out positions are still multiplied by 0 in attention and
        # NaN garbage there would poison real rows.
        dims = (new_slots, new_length, s.num_kv_heads, s.head_dim)
        keys = [torch.zeros(dims, dtype=s.dtype, device=s.device) for _ in range(s.num_layers)]
        values = [torch.zeros(dims, dtype=s.dtype, device=s.device) for _ in range(s.num_layers)]
        if self.keys:
            n, length_old = self.slot_capacity, self.length_capacity
            for new, old in zip((*keys, *values), (*self.keys, *self.values), strict=True):
                new[:n, :length_old].copy_(old)
        self.keys, self.values = keys, values
        self.slot_capacity, self.length_capacity = new_slots, new_length

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction)."""
        if length <= 0 or src == dst:
            return
        for tensor in (*self.keys, *self.values):
            tensor[dst, :length].copy_(tensor[src, :length])

    def release(self) -> None:
        """Give the memory back (the engine is idle)."""
        self.keys, self.values = [], []
        self.slot_capacity = self.length_capacity = 0
