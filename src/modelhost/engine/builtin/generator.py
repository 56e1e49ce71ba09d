"""BuiltinGenerator: the `Generator` (engine/protocol.py) that runs a real model.

asyncio-facing: `generate()` validates and tokenizes on the caller's loop, then hands the
sequence to the engine thread (engine.py), which owns the model and never blocks the loop. The
engine thread posts each step's events back with one call_soon_threadsafe per step. Closing a
stream early cancels its sequence; the engine frees its slot before the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelhost.engine.builtin.adapter_host import BuiltinAdapters
from modelhost.engine.builtin.detokenizer import IncrementalDetokenizer
from modelhost.engine.builtin.engine import EngineCore, Job, start_thread
from modelhost.engine.builtin.loader import LoadedModel, load
from modelhost.engine.builtin.options import BuiltinOptions
from modelhost.engine.builtin.sampling import RowSampler
from modelhost.engine.builtin.scheduler import Sequence
from modelhost.engine.protocol import (
    ContextLengthExceeded,
    EngineStats,
    GenerationRequest,
    GeneratorError,
    SamplingParams,
    TokenEvent,
)

log = logging.getLogger(__name__)
_Item = list[TokenEvent] | GeneratorError


@dataclass(frozen=True)
class WeightsSource:
    local: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None


class BuiltinGenerator:
    def __init__(
        self,
        *,
        served_model_name: str,
        max_batch_size: int,
        weights: WeightsSource,
        device: str = "cpu",
        options: BuiltinOptions | None = None,
        preloaded: LoadedModel | None = None,
        adapter_dir: str | None = None,
        max_active_adapters: int = 32,
        preload_adapters: tuple[str, ...] = (),
    ) -> None:
        self._name = served_model_name
        self._max_batch_size = max_batch_size
        self._weights = weights
        self._device = device
        self._options = options or BuiltinOptions()
        self._loaded = preloaded  # tests share one loaded model across generators
        self._core: EngineCore | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[int, asyncio.Queue[_Item]] = {}
        self._next_id = 0
        self._seeds = random.Random(self._options.seed) if self._options.seed is not None else None
        self.timings: dict[str, float] = {}
        self._adapters = BuiltinAdapters(adapter_dir, max_active_adapters, preload_adapters)

    # -- Generator protocol ----------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self._name

    @property
    def context_length(self) -> int:
        if self._loaded is not None:
            return self._loaded.context_length
        return self._options.context_length or 0

    @property
    def ready(self) -> bool:
        return self._core is not None

    async def start(self) -> None:
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        if self._loaded is None:
            # Raises WeightsError with a message meant for the user on any startup failure.
            self._loaded = await asyncio.to_thread(
                load,
                local=self._weights.local,
                hf_repo=self._weights.hf_repo,
                hf_revision=self._weights.hf_revision,
                device=self._device,
                options=self._options,
                max_batch_size=self._max_batch_size,
            )
        loaded = self._loaded
        core = EngineCore(
            loaded.model,
            loaded.decode_tokenizer,
            max_batch_size=self._max_batch_size,
            max_prefill_tokens=self._options.max_prefill_tokens,
            context_length=loaded.context_length,
            kv_budget_tokens=loaded.kv_budget_tokens,
            sink=self._sink,
        )
        self._adapters.attach(core)
        self._thread = start_thread(core)
        await self._adapters.preload()  # resident before the replica reports ready
        self._core = core
        self.timings = {**loaded.timings, "start_s": time.perf_counter() - started}
        t = self.timings
        parts = ", ".join(
            f"{name.removesuffix('_s')} {t[name]:.2f}s"
            for name in (
                "resolve_s",
                "weights_load_s",
                "tokenizer_load_s",
                "calibrate_s",
                "warmup_s",
            )
            if name in t
        )
        sys.stderr.write(
            f"builtin engine ready: {loaded.description} ({loaded.model.spec.architecture}, "
            f"{self._dtype_name()}, {self._device}, context {loaded.context_length}) in "
            f"{t['start_s']:.2f}s ({parts}); dtype {self._dtype_name()} (attention "
            f"{self.runtime()['attention_dtype']}): {loaded.dtype_reason}\n"
        )
        sys.stderr.flush()

    async def close(self) -> None:
        core, thread = self._core, self._thread
        self._core = None
        if core is not None and thread is not None:
            core.stop()
            await asyncio.to_thread(thread.join, 30.0)
        gone = GeneratorError("the engine is shutting down")
        for q in self._queues.values():
            q.put_nowait(gone)

    def _dtype_name(self) -> str:
        loaded = self._loaded_or_fail()
        return str(loaded.model.dtype).removeprefix("torch.")

    def runtime(self) -> dict[str, str]:
        """What the engine runs on and why (for /stats and /info)."""
        loaded = self._loaded
        if loaded is None:
            return {"device": self._device}
        return {
            "device": self._device,
            "dtype": self._dtype_name(),
            "attention_dtype": str(loaded.model.kv_dtype).removeprefix("torch."),
            "dtype_reason": loaded.dtype_reason,
        }

    def stats(self) -> EngineStats:
        core = self._core
        if core is None:
            return EngineStats(
                running=0,
                waiting=0,
                max_batch_size=self._max_batch_size,
                runtime=self.runtime(),
            )
        running = core.scheduler.running
        # Counted from the streams: also covers requests not yet picked up by the engine.
        waiting = max(0, len(self._queues) - running)
        stack = self._adapters.stack
        return EngineStats(
            running=running,
            waiting=waiting,
            max_batch_size=self._max_batch_size,
            adapters=self._adapters.states(),
            runtime=self.runtime(),
            extra={
                "adapters_resident": float(self._adapters.pool.resident),
                "adapter_stack_bytes": float(stack.allocated_bytes if stack else 0),
                "kv_cache_bytes": float(core.cache.allocated_bytes),
                "engine_steps": float(core.steps),
                "generated_tokens": float(core.generated_tokens),
                "forward_seconds": core.forward_seconds,
                "step_seconds": core.step_seconds,
            },
        )

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._loaded_or_fail().prompts.encode(request))

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        # Everything that can be wrong with the request is raised here, before the HTTP layer
        # commits to a status line; the sequence joins the engine when the stream is iterated.
        loaded = self._loaded_or_fail()
        if self._core is None:
            raise GeneratorError("the engine is not running")
        # Raises UnknownAdapter unless <adapter_dir>/<id>/ holds an adapter.
        adapter = request.adapter_id
        folder = self._adapters.check(adapter) if adapter is not None else None
        params = request.params
        _validate(params)
        prompt = loaded.prompts.encode(request)
        ctx = loaded.context_length
        where: Literal["messages", "prompt"] = "prompt" if request.messages is None else "messages"
        if len(prompt) >= ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens, and your {where} has "
                f"{len(prompt)} tokens, leaving no room to generate.",
                where,
            )
        if len(prompt) + params.max_tokens > ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{len(prompt) + params.max_tokens} tokens ({len(prompt)} in the {where}, "
                f"{params.max_tokens} for the completion).",
                "max_tokens",
            )
        seed = params.seed if params.seed is not None else self._fresh_seed()
        self._next_id += 1
        seq = Sequence(
            seq_id=self._next_id,
            prompt_len=len(prompt),
            max_new_tokens=params.max_tokens,
            tokens=list(prompt),
        )
        job = Job(
            request_id=request.request_id,
            seq=seq,
            sampler=RowSampler.create(params, seed, loaded.model.spec.vocab_size, prompt),
            detok=IncrementalDetokenizer(loaded.decode_tokenizer, prompt, params.stop),
            ignore_eos=params.ignore_eos,
            report_seed=seed if params.temperature > 0 else None,
        )
        return self._stream(job, adapter, folder)

    # -- internals -------------------------------------------------------------------------
    def _loaded_or_fail(self) -> LoadedModel:
        if self._loaded is None:
            raise GeneratorError("the model is still loading")
        return self._loaded

    def _fresh_seed(self) -> int:
        if self._seeds is not None:
            return self._seeds.getrandbits(63)
        return secrets.randbits(63)

    async def _stream(
        self, job: Job, adapter: str | None = None, folder: Path | None = None
    ) -> AsyncIterator[TokenEvent]:
        core = self._core
        if core is None:
            raise GeneratorError("the engine is not running")
        q: asyncio.Queue[_Item] = asyncio.Queue()
        self._queues[job.seq.seq_id] = q
        if adapter is not None and folder is not None:
            try:
                # Loads it first if needed (other sequences keep running meanwhile).
                job.seq.adapter_index = await self._adapters.acquire(adapter, folder)
            except BaseException:
                self._queues.pop(job.seq.seq_id, None)
                raise
        core.submit(job)
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, GeneratorError):
                    finished = True
                    raise item
                for event in item:
                    if event.finish_reason is not None:
                        finished = True
                    yield event
                    if finished:
                        return
        finally:
            self._queues.pop(job.seq.seq_id, None)
            if not finished:
                core.cancel(job)  # the client went away: free the slot at once
            if adapter is not None:
                self._adapters.release(adapter)

    def _sink(self, jobs: list[Job]) -> None:
        """Engine thread: hand this step's events to the loop in one callback."""
        batch: list[tuple[int, list[TokenEvent]]] = []
        for job in jobs:
            if job.events:
                batch.append((job.seq.seq_id, job.events))
                job.events = []
        loop = self._loop
        if batch and loop is not None:
            # RuntimeError: the loop is closed, the process is shutting down.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch: list[tuple[int, list[TokenEvent]]]) -> None:
        for seq_id, events in batch:
            q = self._queues.get(seq_id)
            if q is not None:
                q.put_nowait(events)


def _validate(p: SamplingParams) -> None:
    if p.max_tokens < 1:
        raise GeneratorError("max_tokens must be at least 1")
    if p.temperature < 0:
        raise GeneratorError("temperature must not be negative")
    if not 0 < p.top_p <= 1:
        raise GeneratorError("top_p must be in (0, 1]")
    if p.top_k < 0:
        raise GeneratorError("top_k must not be negative")
    if p.repetition_penalty <= 0:
        raise GeneratorError("repetition_penalty must be positive")
