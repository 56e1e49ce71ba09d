"""The `simulator` engine: a Generator with a timing model and no weights.

It exists for tests and for load / autoscaling experiments at a scale no CPU could run a real
model at. One asyncio task drives every sequence in steps, like a continuous-batching engine:
at most `max_batch_size` sequences run, the rest wait in arrival order, and `stats()` reports
exactly that. The timing and text model is in `simulator_timing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modelhost.engine.adapters import AdapterPool, resolve_adapter
from modelhost.engine.args import EngineArgs
from modelhost.engine.protocol import (
    ContextLengthExceeded,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GeneratorError,
    TokenEvent,
    held_back_suffix,
    stop_positions,
)
from modelhost.engine.server import StartupError
from modelhost.engine.simulator_timing import (
    EOS_TOKEN_ID,
    KnobError,
    SimulatorKnobs,
    TextSource,
    chat_prompt_text,
    count_tokens,
    decode_seconds,
    parse_knobs,
    prefill_seconds,
)

log = logging.getLogger(__name__)

# Exit status of a deliberate crash (--crash-after-requests): not FATAL_EXIT_CODE, because a
# crash must look like a replica dying mid-flight, which the orchestrator restarts.
CRASH_EXIT_CODE = 70


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    stops: tuple[str, ...]
    allow_eos: bool
    report_seed: int | None
    source: TextSource
    events: asyncio.Queue[TokenEvent | GeneratorError] = field(default_factory=asyncio.Queue)
    generated: int = 0
    held: str = ""  # text held back because it may be the start of a stop string
    done: bool = False


class SimulatorGenerator:
    """Implements `modelhost.engine.protocol.Generator` without weights."""

    def __init__(
        self,
        knobs: SimulatorKnobs,
        *,
        model_id: str,
        max_batch_size: int,
        adapter_dir: str | None = None,
        max_active_adapters: int = 32,
        preload_adapters: tuple[str, ...] = (),
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._knobs = knobs
        self._model_id = model_id
        self._max_batch_size = max_batch_size
        # Valid adapters: the --adapters knob's ids, and every folder of adapter_dir with an
        # adapter_config.json (what the control plane materializes). Residency and loading
        # follow the same LRU as the builtin engine, with a simulated load time.
        self._adapters = frozenset(knobs.adapters)
        self._adapter_dir = Path(adapter_dir) if adapter_dir else None
        self._pool = AdapterPool(max_active_adapters, self._load_adapter)
        self._preload = preload_adapters
        self._waiting: deque[_Sequence] = deque()
        # dict keeps admission order and makes a cancelled sequence's removal O(1).
        self._running: dict[int, _Sequence] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._ready = False
        self._closed = False
        self._requests = 0
        self._steps = 0
        self._tokens = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_length(self) -> int:
        return self._knobs.context_length

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def knobs(self) -> SimulatorKnobs:
        return self._knobs

    def _prompt_text(self, request: GenerationRequest) -> str:
        if request.messages is not None:
            return chat_prompt_text(request.messages)
        return request.prompt or ""

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return count_tokens(self._prompt_text(request))

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            max_batch_size=self._max_batch_size,
            extra={
                "requests": float(self._requests),
                "steps": float(self._steps),
                "generated_tokens": float(self._tokens),
                "adapters_resident": float(self._pool.resident),
            },
            adapters=self._pool.states(),
        )

    async def start(self) -> None:
        await asyncio.sleep(self._knobs.startup_s)
        if self._knobs.fail_start is not None:
            raise StartupError(self._knobs.fail_start)
        self._loop_task = asyncio.create_task(self._run(), name="simulator-steps")
        for adapter_id in self._preload:
            try:
                await self._pool.preload(adapter_id, self._adapter_folder(adapter_id))
            except GeneratorError as exc:
                sys.stderr.write(f"modelhost-warning: preloading adapter failed: {exc}\n")
        self._ready = True

    def _adapter_folder(self, adapter_id: str) -> Path | None:
        """None for an id of the --adapters knob; raises UnknownAdapter for an unknown id."""
        if adapter_id in self._adapters:
            return None
        return resolve_adapter(self._adapter_dir, adapter_id)

    async def _load_adapter(self, adapter_id: str, folder: Path | None, slot: int) -> None:
        await asyncio.sleep(self._knobs.adapter_load_ms / 1000.0)

    async def close(self) -> None:
        self._closed = True
        self._ready = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        gone = GeneratorError("the engine is shutting down")
        for seq in [*self._waiting, *self._running.values()]:
            seq.done = True
            seq.events.put_nowait(gone)
        self._waiting.clear()
        self._running.clear()

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        # Validation happens here, synchronously, so the HTTP layer gets errors before it
        # commits to a status line; the sequence only joins the queue once iterated.
        if self._closed or self._loop_task is None:
            raise GeneratorError("the engine is not running")
        adapter = request.adapter_id
        folder = self._adapter_folder(adapter) if adapter is not None else None
        prompt = self._prompt_text(request)
        n_prompt = count_tokens(prompt)
        ctx = self._knobs.context_length
        where: Literal["messages", "prompt"] = (
            "messages" if request.messages is not None else "prompt"
        )
        if n_prompt >= ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens, and your {where} has "
                f"{n_prompt} tokens, leaving no room to generate.",
                where,
            )
        params = request.params
        if params.max_tokens < 1:
            raise GeneratorError("max_tokens must be at least 1")
        if n_prompt + params.max_tokens > ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the {where}, "
                f"{params.max_tokens} for the completion).",
                "max_tokens",
            )
        self._count_request()
        source = TextSource(self._knobs.seed, prompt, request.adapter_id, params.seed)
        sampling = params.temperature > 0
        seq = _Sequence(
            request_id=request.request_id,
            prompt_tokens=n_prompt,
            max_tokens=params.max_tokens,
            stops=tuple(s for s in params.stop if s),
            allow_eos=not params.ignore_eos and self._knobs.eos_probability > 0,
            report_seed=(params.seed if params.seed is not None else source.seed)
            if sampling
            else None,
            source=source,
        )
        return self._stream(seq, adapter, folder)

    def _count_request(self) -> None:
        self._requests += 1
        limit = self._knobs.crash_after_requests
        if limit is not None and self._requests > limit:
            # Chaos testing: die like a real engine would (OOM, segfault), no cleanup at all.
            sys.stderr.write(
                f"simulator: crashing on purpose after {limit} requests (--crash-after-requests)\n"
            )
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)

    async def _stream(
        self, seq: _Sequence, adapter: str | None = None, folder: Path | None = None
    ) -> AsyncIterator[TokenEvent]:
        if adapter is not None:
            await self._pool.acquire(adapter, folder)  # waits for a simulated load
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                item = await seq.events.get()
                if isinstance(item, GeneratorError):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self._discard(seq)
            if adapter is not None:
                self._pool.release(adapter)

    def _discard(self, seq: _Sequence) -> None:
        """Free the sequence's slot at once (finished, or its consumer went away)."""
        if seq.done:
            return
        seq.done = True
        if self._running.pop(id(seq), None) is None:
            with contextlib.suppress(ValueError):
                self._waiting.remove(seq)

    def _admit(self) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        while self._waiting and len(self._running) < self._max_batch_size:
            seq = self._waiting.popleft()
            self._running[id(seq)] = seq
            admitted.append(seq)
        return admitted

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
            admitted = self._admit()
            if admitted:
                batch = admitted
                duration = prefill_seconds(self._knobs, sum(s.prompt_tokens for s in admitted))
            else:
                batch = list(self._running.values())
                duration = decode_seconds(self._knobs, len(batch))
            # Sleep to an absolute deadline so scheduler jitter does not accumulate into the
            # simulated token rate; after a long stall, restart the clock instead of bursting.
            deadline += duration
            now = loop.time()
            if deadline > now:
                await asyncio.sleep(deadline - now)
            elif now - deadline > duration:
                deadline = now
            self._steps += 1
            for seq in batch:
                if not seq.done:
                    self._step(seq)

    def _step(self, seq: _Sequence) -> None:
        """Produce one token for `seq` and hand its event to the consumer."""
        seq.generated += 1
        self._tokens += 1
        if seq.allow_eos and seq.source.draw() < self._knobs.eos_probability:
            self._finish(seq, EOS_TOKEN_ID, seq.held, 0.0, "eos_token", special=True)
            return
        tid, text, logprob = seq.source.next_token()
        buf = seq.held + text
        if seq.stops:
            pos = stop_positions(buf, seq.stops)
            if pos is not None:
                self._finish(seq, tid, buf[:pos], logprob, "stop_sequence")
                return
        if seq.generated >= seq.max_tokens:
            self._finish(seq, tid, buf, logprob, "length")
            return
        hold = held_back_suffix(buf, seq.stops) if seq.stops else 0
        seq.held = buf[len(buf) - hold :] if hold else ""
        emitted = buf[: len(buf) - hold] if hold else buf
        seq.events.put_nowait(TokenEvent(token_id=tid, text=emitted, logprob=logprob))

    def _finish(
        self,
        seq: _Sequence,
        token_id: int,
        text: str,
        logprob: float,
        reason: FinishReason,
        *,
        special: bool = False,
    ) -> None:
        seq.held = ""
        seq.events.put_nowait(
            TokenEvent(
                token_id=token_id,
                text=text,
                logprob=logprob,
                special=special,
                finish_reason=reason,
                prompt_tokens=seq.prompt_tokens,
                generated_tokens=seq.generated,
                seed=seq.report_seed,
            )
        )
        self._discard(seq)


def build_generator(args: EngineArgs) -> SimulatorGenerator:
    """Entry point used by `python -m modelhost.engine --engine simulator`."""
    try:
        knobs = parse_knobs(args.extra)
    except KnobError as exc:
        raise StartupError(str(exc)) from exc
    return SimulatorGenerator(
        knobs,
        model_id=args.served_model_name,
        max_batch_size=args.max_batch_size,
        adapter_dir=args.adapter_dir,
        max_active_adapters=args.max_active_adapters,
        preload_adapters=args.preload_adapters,
    )
