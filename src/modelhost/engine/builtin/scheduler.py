"""Continuous batching: which sequences run in the next step, and which tokens each feeds.

Pure bookkeeping, no tensors. Every step, waiting sequences join while there is a free slot
(at most max_batch_size run) and KV-cache budget, finished or cancelled ones leave at once, and
the step is built from every running sequence's next decode token plus prompt chunks of the
sequences still in prefill, up to `max_prefill_tokens` prompt tokens per step so a long prompt
never stalls the running streams for more than one bounded chunk.

Prompt chunks start at multiples of the chunk size whatever else is running, so a sequence's
computation (and, with batch-invariant kernels, its greedy output) is the same alone or in a
crowd. Running sequences hold slots 0..n-1; when one leaves, the last one moves into its slot
(`Move`), which keeps decode attention over one contiguous block of the KV cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_PREFILL_CHUNKS = 4  # most prompt chunks per step (when prompts outnumber running streams)


@dataclass(eq=False)
class Sequence:
    """One request's state inside the engine. `tokens` = prompt + generated so far."""

    seq_id: int
    prompt_len: int
    max_new_tokens: int
    tokens: list[int]
    adapter_index: int = -1  # multi-LoRA: index into the loaded adapters, -1 = base
    slot: int = -1
    computed: int = 0  # tokens whose keys/values are in the KV cache
    finished: bool = False

    @property
    def reserved_length(self) -> int:
        """Most tokens this sequence can ever hold in the cache."""
        return self.prompt_len + self.max_new_tokens

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.prompt_len


@dataclass(frozen=True)
class Chunk:
    seq: Sequence
    start: int
    end: int

    @property
    def completes_prompt(self) -> bool:
        return self.end == self.seq.prompt_len


@dataclass(frozen=True)
class Move:
    """Slot `src` now lives in slot `dst`; its first `length` cache positions must be copied."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class StepPlan:
    decode: list[Sequence]  # in slot order
    prefill: list[Chunk]
    joined: list[Sequence] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Scheduler:
    def __init__(self, max_batch_size: int, max_prefill_tokens: int, kv_budget_tokens: int) -> None:
        self.max_batch_size = max_batch_size
        self.chunk_size = max_prefill_tokens
        self.kv_budget_tokens = kv_budget_tokens
        self.waiting: deque[Sequence] = deque()
        self.slots: list[Sequence] = []  # slots[i].slot == i
        self.pending_moves: list[Move] = []

    @property
    def running(self) -> int:
        return len(self.slots)

    @property
    def idle(self) -> bool:
        return not self.slots and not self.waiting

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> bool:
        """Take a sequence out (finished, or cancelled by its client); frees its slot at once.
        Returns False when it was not there (already finished)."""
        seq.finished = True
        if seq.slot < 0:
            try:
                self.waiting.remove(seq)
            except ValueError:
                return False
            return True
        slot, last = seq.slot, self.slots[-1]
        self.slots.pop()
        if last is not seq:
            # Keep slots dense: the last sequence takes the freed slot.
            self.pending_moves.append(Move(src=last.slot, dst=slot, length=last.computed))
            last.slot = slot
            self.slots[slot] = last
        seq.slot = -1
        return True

    def take_moves(self) -> list[Move]:
        moves, self.pending_moves = self.pending_moves, []
        return moves

    def _fits(self, seq: Sequence) -> bool:
        if not self.slots:
            return True  # a lone sequence always runs, or nothing ever would
        longest = max(seq.reserved_length, *(s.reserved_length for s in self.slots))
        return (len(self.slots) + 1) * longest <= self.kv_budget_tokens

    def plan(self) -> StepPlan:
        joined: list[Sequence] = []
        while self.waiting and len(self.slots) < self.max_batch_size:
            if not self._fits(self.waiting[0]):
                break  # arrival order is kept: later requests do not overtake
            seq = self.waiting.popleft()
            seq.slot = len(self.slots)
            self.slots.append(seq)
            joined.append(seq)
        decode = [s for s in self.slots if not s.in_prefill]
        prefilling = len(self.slots) - len(decode)
        prefill: list[Chunk] = []
        # The bound protects running streams from a long prefill. When more prompts wait than
        # streams run (a burst of arrivals; nothing running at all), the stall is worth it: up to
        # MAX_PREFILL_CHUNKS chunks per step start more sequences at once, and bigger steps run
        # the matmuls more efficiently.
        chunks = MAX_PREFILL_CHUNKS
        if decode:
            chunks = min(MAX_PREFILL_CHUNKS, max(1, -(-prefilling // len(decode))))
        budget = self.chunk_size * chunks
        # Oldest prompts first, so a burst of arrivals is served in arrival order.
        for seq in sorted((s for s in self.slots if s.in_prefill), key=lambda s: s.seq_id):
            start = seq.computed
            while start < seq.prompt_len and budget > 0:
                end = min(seq.prompt_len, (start // self.chunk_size + 1) * self.chunk_size)
                if prefill and end - start > budget:
                    return StepPlan(decode=decode, prefill=prefill, joined=joined)
                # Several chunks of one prompt may share a step: each layer writes every row's
                # keys before any row attends, so a chunk sees the chunks before it.
                prefill.append(Chunk(seq, start, end))
                budget -= end - start
                start = end
        return StepPlan(decode=decode, prefill=prefill, joined=joined)
