"""The engine loop: scheduler + model + sampling + detokenizing, one step at a time.

It runs on one dedicated thread (generator.py starts it) and talks to the asyncio side only
through a command queue (submit, cancel) and a sink called once per step with every sequence's
new events. `step()` is also callable directly, which is how the unit tests drive it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modelhost.engine.builtin.detokenizer import IncrementalDetokenizer
from modelhost.engine.builtin.kv_cache import CacheShape, SlotKVCache
from modelhost.engine.builtin.lora import LoraStack
from modelhost.engine.builtin.model import CausalLM, PrefillSpan, StepInput
from modelhost.engine.builtin.sampling import RowSampler, Sampled, sample
from modelhost.engine.builtin.scheduler import Chunk, Scheduler, Sequence
from modelhost.engine.protocol import FinishReason, TokenEvent

log = logging.getLogger(__name__)
_IDLE_RELEASE_S = 5.0  # free the KV cache after this long with nothing to do


@dataclass(eq=False)
class Job:
    """A request inside the engine: its sequence plus everything needed to turn tokens into
    events. `events` collects what one step produced for it."""

    request_id: str
    seq: Sequence
    sampler: RowSampler
    detok: IncrementalDetokenizer
    ignore_eos: bool
    report_seed: int | None
    events: list[TokenEvent] = field(default_factory=list)
    done: bool = False


Sink = Callable[[list[Job]], None]


class EngineCore:
    def __init__(
        self,
        model: CausalLM,
        tokenizer: Any,
        *,
        max_batch_size: int,
        max_prefill_tokens: int,
        context_length: int,
        kv_budget_tokens: int,
        sink: Sink,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sink = sink
        spec = model.spec
        self.eos_ids = frozenset(spec.eos_token_ids)
        self.special_ids = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []))
        self.scheduler = Scheduler(max_batch_size, max_prefill_tokens, kv_budget_tokens)
        shape = CacheShape(
            spec.num_layers, spec.num_kv_heads, spec.head_dim, model.kv_dtype, model.device
        )
        self.cache = SlotKVCache(shape, max_batch_size, context_length)
        self.jobs: dict[int, Job] = {}  # by seq_id
        self.commands: queue.SimpleQueue[tuple[str, Job | None]] = queue.SimpleQueue()
        # Multi-LoRA: resident adapters' weights (set by the generator), and work that must run
        # on this thread between steps (installing an adapter into the stack).
        self.lora: LoraStack | None = None
        self.calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.steps = 0
        self.generated_tokens = 0
        # Where step time goes (exported in stats; the benchmark reads them).
        self.forward_seconds = 0.0
        self.step_seconds = 0.0

    # -- called from any thread ------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.commands.put(("submit", job))

    def cancel(self, job: Job) -> None:
        self.commands.put(("cancel", job))

    def stop(self) -> None:
        self.commands.put(("stop", None))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread before anything submitted after it."""
        self.calls.put(fn)
        self.commands.put(("call", None))

    # -- engine thread ---------------------------------------------------------------------
    def run_forever(self) -> None:
        while True:
            block = self.scheduler.idle
            try:
                if not self._drain(block):
                    return
            except queue.Empty:
                self.cache.release()  # idle for a while: give the memory back
                continue
            if not self.scheduler.idle:
                self.step_safely()

    def _drain(self, block: bool) -> bool:
        """Apply queued commands; with `block`, wait for the first. False means stop."""
        first = True
        while True:
            try:
                if block and first:
                    kind, job = self.commands.get(timeout=_IDLE_RELEASE_S)
                else:
                    kind, job = self.commands.get_nowait()
            except queue.Empty:
                if block and first:
                    raise
                return True
            first = False
            if kind == "stop":
                return False
            if kind == "call":
                self.calls.get_nowait()()
                continue
            assert job is not None
            if kind == "submit":
                self.jobs[job.seq.seq_id] = job
                self.scheduler.add(job.seq)
            elif kind == "cancel":
                self._drop(job)

    def _drop(self, job: Job) -> None:
        if self.jobs.pop(job.seq.seq_id, None) is not None:
            self.scheduler.remove(job.seq)
        job.done = True

    def step_safely(self) -> None:
        try:
            self.step()
        except Exception:
            # A bug or an out-of-memory must not take the replica down: fail the sequences in
            # flight, start from a clean cache, keep serving.
            log.exception("engine step failed; failing %d sequences", len(self.jobs))
            failed = list(self.jobs.values())
            for job in failed:
                job.events.append(self._final(job, 0, "", "error"))
                self._drop(job)
            self.cache.release()
            self.sink(failed)

    def step(self) -> None:
        """Admit, run one forward pass, sample, emit. No-op when nothing is running."""
        started = time.perf_counter()
        self._drain(block=False)
        sched = self.scheduler
        plan = sched.plan()
        for move in sched.take_moves():
            self.cache.move(move.src, move.dst, move.length)
        if plan.empty:
            return
        step = self._build_input(plan.decode, plan.prefill)
        self.cache.ensure(sched.running, int(step.slot_lengths.max()))
        forward_started = time.perf_counter()
        lora = None
        if self.lora is not None:
            spans = [(span.row, span.length) for span in step.prefill]
            lora = self.lora.for_step(step.adapter_rows, step.decode_rows, spans)
        logits = self.model.forward(step, self.cache, lora).cpu()
        self.forward_seconds += time.perf_counter() - forward_started
        sampled_jobs: list[Job] = [self.jobs[s.seq_id] for s in plan.decode]
        for seq in plan.decode:
            seq.computed += 1
        for chunk in plan.prefill:
            chunk.seq.computed = chunk.end
            if chunk.completes_prompt:
                sampled_jobs.append(self.jobs[chunk.seq.seq_id])
        picks = sample(logits, [job.sampler for job in sampled_jobs])
        self.steps += 1
        touched: list[Job] = []
        for job, pick in zip(sampled_jobs, picks, strict=True):
            self._advance(job, pick)
            touched.append(job)
        for job in touched:
            if job.events and job.events[-1].finish_reason is not None:
                self._drop(job)
        self.sink(touched)
        self.step_seconds += time.perf_counter() - started

    def _build_input(self, decode: list[Sequence], prefill: list[Chunk]) -> StepInput:
        tokens: list[int] = [s.tokens[-1] for s in decode]
        positions: list[int] = [s.computed for s in decode]
        slots: list[int] = [s.slot for s in decode]
        adapters: list[int] = [s.adapter_index for s in decode]
        sample_rows: list[int] = list(range(len(decode)))
        lengths = [s.computed for s in self.scheduler.slots]
        for s in decode:
            lengths[s.slot] = s.computed + 1
        spans: list[PrefillSpan] = []
        for chunk in prefill:
            seq, row = chunk.seq, len(tokens)
            size = chunk.end - chunk.start
            spans.append(PrefillSpan(row=row, length=size, slot=seq.slot, start=chunk.start))
            tokens.extend(seq.tokens[chunk.start : chunk.end])
            positions.extend(range(chunk.start, chunk.end))
            slots.extend([seq.slot] * size)
            adapters.extend([seq.adapter_index] * size)
            lengths[seq.slot] = chunk.end
            if chunk.completes_prompt:
                sample_rows.append(row + size - 1)
        device = self.model.device

        def as_tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return StepInput(
            tokens=as_tensor(tokens),
            positions=as_tensor(positions),
            slots=as_tensor(slots),
            adapter_rows=as_tensor(adapters),
            decode_rows=len(decode),
            active_slots=self.scheduler.running,
            slot_lengths=as_tensor(lengths),
            prefill=tuple(spans),
            sample_rows=as_tensor(sample_rows),
        )

    def _advance(self, job: Job, pick: Sampled) -> None:
        seq, token = job.seq, pick.token
        seq.tokens.append(token)
        self.generated_tokens += 1
        reason: FinishReason | None = None
        if token in self.eos_ids and not job.ignore_eos:
            text, reason = job.detok.flush(), "eos_token"
        else:
            delta = job.detok.add(token)
            text = delta.text
            if delta.stopped:
                reason = "stop_sequence"
            elif seq.generated >= seq.max_new_tokens:
                text, reason = text + job.detok.flush(), "length"
        if reason is None:
            job.events.append(
                TokenEvent(
                    token_id=token,
                    text=text,
                    logprob=pick.logprob,
                    special=token in self.special_ids,
                )
            )
        else:
            job.events.append(self._final(job, token, text, reason, pick.logprob))

    def _final(
        self, job: Job, token: int, text: str, reason: FinishReason, logprob: float | None = None
    ) -> TokenEvent:
        seq = job.seq
        return TokenEvent(
            token_id=token,
            text=text,
            logprob=logprob,
            special=token in self.special_ids,
            finish_reason=reason,
            prompt_tokens=seq.prompt_len,
            generated_tokens=seq.generated,
            seed=job.report_seed,
        )


def start_thread(core: EngineCore, name: str = "modelhost-engine") -> threading.Thread:
    thread = threading.Thread(target=core.run_forever, name=name, daemon=True)
    thread.start()
    return thread
