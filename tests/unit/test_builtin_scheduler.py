"""Continuous-batching bookkeeping of the builtin engine (no model, no tensors)."""

from __future__ import annotations

from modelhost.engine.builtin.scheduler import Move, Scheduler, Sequence


def seq(seq_id: int, prompt: int, new: int = 8) -> Sequence:
    return Sequence(seq_id=seq_id, prompt_len=prompt, max_new_tokens=new, tokens=[1] * prompt)


def finish_prefill(plan_chunks: list, sched: Scheduler) -> None:  # type: ignore[type-arg]
    for chunk in plan_chunks:
        chunk.seq.computed = chunk.end
        if chunk.completes_prompt:
            chunk.seq.tokens.append(7)


def test_at_most_max_batch_size_run_and_the_rest_wait_in_order() -> None:
    sched = Scheduler(max_batch_size=2, max_prefill_tokens=64, kv_budget_tokens=10_000)
    a, b, c = seq(1, 4), seq(2, 4), seq(3, 4)
    for s in (a, b, c):
        sched.add(s)
    plan = sched.plan()
    assert plan.joined == [a, b]
    assert [s.slot for s in (a, b, c)] == [0, 1, -1]
    assert list(sched.waiting) == [c]
    assert sched.running == 2


def test_a_sequence_leaving_frees_its_slot_for_the_next_step() -> None:
    sched = Scheduler(max_batch_size=2, max_prefill_tokens=64, kv_budget_tokens=10_000)
    a, b, c = seq(1, 4), seq(2, 4), seq(3, 4)
    for s in (a, b, c):
        sched.add(s)
    finish_prefill(sched.plan().prefill, sched)
    assert sched.remove(a)
    # b moved into a's slot so running sequences stay in slots 0..n-1.
    assert sched.take_moves() == [Move(src=1, dst=0, length=4)]
    assert b.slot == 0 and a.slot == -1
    plan = sched.plan()
    assert plan.joined == [c] and c.slot == 1
    assert [s.seq_id for s in plan.decode] == [2]
    assert [ch.seq for ch in plan.prefill] == [c]


def test_removing_the_last_slot_needs_no_move() -> None:
    sched = Scheduler(max_batch_size=4, max_prefill_tokens=64, kv_budget_tokens=10_000)
    a, b = seq(1, 4), seq(2, 4)
    sched.add(a)
    sched.add(b)
    sched.plan()
    sched.remove(b)
    assert sched.take_moves() == []
    assert sched.slots == [a]


def test_cancel_while_waiting_and_double_remove() -> None:
    sched = Scheduler(max_batch_size=1, max_prefill_tokens=64, kv_budget_tokens=10_000)
    a, b = seq(1, 4), seq(2, 4)
    sched.add(a)
    sched.add(b)
    sched.plan()
    assert sched.remove(b)  # still waiting
    assert not sched.waiting
    assert not sched.remove(b)
    assert sched.remove(a)
    assert sched.idle


def test_prefill_is_chunked_at_fixed_boundaries_and_bounded_per_step() -> None:
    sched = Scheduler(max_batch_size=8, max_prefill_tokens=16, kv_budget_tokens=10_000)
    sched.add(seq(8, 4))
    sched.add(seq(9, 4))
    finish_prefill(sched.plan().prefill, sched)
    long, short = seq(1, 40), seq(2, 5)
    sched.add(long)
    sched.add(short)
    plan = sched.plan()
    # As many streams decode as prompts wait: one chunk of prompt tokens per step, oldest first.
    assert [(c.seq.seq_id, c.start, c.end) for c in plan.prefill] == [(1, 0, 16)]
    finish_prefill(plan.prefill, sched)
    plan = sched.plan()
    assert [(c.seq.seq_id, c.start, c.end) for c in plan.prefill] == [(1, 16, 32)]
    finish_prefill(plan.prefill, sched)
    plan = sched.plan()
    assert [(c.seq.seq_id, c.start, c.end) for c in plan.prefill] == [(1, 32, 40), (2, 0, 5)]
    assert all(c.completes_prompt for c in plan.prefill)
    finish_prefill(plan.prefill, sched)
    plan = sched.plan()
    assert plan.prefill == [] and [s.seq_id for s in plan.decode] == [8, 9, 1, 2]


def test_more_prompts_than_running_streams_get_more_chunks_per_step() -> None:
    sched = Scheduler(max_batch_size=8, max_prefill_tokens=16, kv_budget_tokens=10_000)
    sched.add(seq(1, 4))
    finish_prefill(sched.plan().prefill, sched)
    for i in range(2, 5):
        sched.add(seq(i, 10))
    plan = sched.plan()
    # One stream decodes, three prompts wait: three chunks' worth (48 tokens) this step.
    assert [(c.seq.seq_id, c.end) for c in plan.prefill] == [(2, 10), (3, 10), (4, 10)]


def test_an_idle_engine_prefills_several_chunks_per_step_at_the_same_boundaries() -> None:
    sched = Scheduler(max_batch_size=8, max_prefill_tokens=16, kv_budget_tokens=10_000)
    long, short = seq(1, 40), seq(2, 30)
    sched.add(long)
    sched.add(short)
    plan = sched.plan()
    # Nothing decodes: up to MAX_PREFILL_CHUNKS chunks, still cut at multiples of 16.
    chunks = [(c.seq.seq_id, c.start, c.end) for c in plan.prefill]
    assert chunks == [(1, 0, 16), (1, 16, 32), (1, 32, 40), (2, 0, 16)]
    finish_prefill(plan.prefill, sched)
    plan = sched.plan()
    assert [(c.seq.seq_id, c.start, c.end) for c in plan.prefill] == [(2, 16, 30)]


def test_decoding_sequences_keep_running_while_a_prompt_is_prefilled() -> None:
    sched = Scheduler(max_batch_size=8, max_prefill_tokens=16, kv_budget_tokens=10_000)
    a = seq(1, 4)
    sched.add(a)
    finish_prefill(sched.plan().prefill, sched)
    sched.add(seq(2, 100))
    for _ in range(3):
        plan = sched.plan()
        assert [s.seq_id for s in plan.decode] == [1]
        assert sum(c.end - c.start for c in plan.prefill) <= 16
        finish_prefill(plan.prefill, sched)
        a.computed += 1
        a.tokens.append(5)


def test_kv_budget_holds_back_joins_but_never_blocks_a_lone_sequence() -> None:
    # Each sequence may grow to 100 tokens; the budget holds two of them.
    sched = Scheduler(max_batch_size=8, max_prefill_tokens=64, kv_budget_tokens=200)
    big = seq(1, 50, new=500)  # alone over budget: still runs
    sched.add(big)
    assert sched.plan().joined == [big]
    sched.remove(big)
    a, b, c = seq(2, 50, 50), seq(3, 50, 50), seq(4, 50, 50)
    for s in (a, b, c):
        sched.add(s)
    assert sched.plan().joined == [a, b]
    assert list(sched.waiting) == [c]
