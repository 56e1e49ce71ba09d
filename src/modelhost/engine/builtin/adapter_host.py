"""The builtin engine's side of multi-LoRA: the residency pool (engine/adapters.py) wired to
loading real adapter weights.

A load reads and converts the adapter's safetensors in a worker thread (the event loop and the
engine thread keep running), then asks the engine thread to copy it into its slot of the
`LoraStack` between two steps, and completes when that copy is done. Requests for an adapter are
only handed to the engine after that, so a sequence never runs with a half-installed adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import torch

from modelhost.engine.adapters import AdapterPool, resolve_adapter
from modelhost.engine.builtin.engine import EngineCore
from modelhost.engine.builtin.lora import LoraStack, read_adapter
from modelhost.engine.protocol import AdapterState, GeneratorError

log = logging.getLogger(__name__)


def lora_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the LoRA path. On CPU, float32: torch's bf16 batched matmul has no fast
    kernel there (measured several times slower than float32 for these small shapes), and the
    stack is small. On GPUs, the model's dtype, like peft."""
    if device.type == "cpu":
        return torch.float32
    return model_dtype


class BuiltinAdapters:
    def __init__(
        self, adapter_dir: str | None, max_active: int, preload: tuple[str, ...] = ()
    ) -> None:
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.max_active = max_active
        self.preload_ids = preload
        self.pool = AdapterPool(max_active, self._load)
        self._core: EngineCore | None = None
        self._stack: LoraStack | None = None

    @property
    def stack(self) -> LoraStack | None:
        return self._stack

    def attach(self, core: EngineCore) -> None:
        """Give `core` a stack for this engine's model (called once the core exists)."""
        model = core.model
        self._stack = LoraStack(
            model.spec, self.max_active, lora_dtype(model.dtype, model.device), model.device
        )
        core.lora = self._stack
        self._core = core

    def check(self, adapter_id: str) -> Path:
        """The adapter's folder; raises UnknownAdapter (synchronously, before any byte)."""
        return resolve_adapter(self.adapter_dir, adapter_id)

    async def acquire(self, adapter_id: str, folder: Path) -> int:
        return await self.pool.acquire(adapter_id, folder)

    def release(self, adapter_id: str) -> None:
        self.pool.release(adapter_id)

    def states(self) -> tuple[AdapterState, ...]:
        return self.pool.states()

    async def preload(self) -> None:
        """Load the --preload-adapter ids. One that cannot be loaded is reported and skipped:
        the replica still serves the base model and every other adapter."""
        for adapter_id in self.preload_ids:
            try:
                await self.pool.preload(adapter_id, self.check(adapter_id))
            except GeneratorError as exc:
                sys.stderr.write(f"modelhost-warning: preloading adapter failed: {exc}\n")

    async def _load(self, adapter_id: str, folder: Path | None, slot: int) -> None:
        core, stack = self._core, self._stack
        if core is None or stack is None or folder is None:
            raise GeneratorError("the engine is not running")
        weights = await asyncio.to_thread(read_adapter, adapter_id, folder, stack.spec, stack.dtype)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finish(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def install() -> None:  # on the engine thread, between two steps
            error: BaseException | None = None
            try:
                stack.install(slot, weights)
            except Exception as exc:  # out of memory, most likely
                log.exception("installing adapter %s failed", adapter_id)
                error = GeneratorError(f"adapter {adapter_id!r} could not be installed: {exc}")
            with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
                loop.call_soon_threadsafe(finish, error)

        core.call_soon(install)
        await done
