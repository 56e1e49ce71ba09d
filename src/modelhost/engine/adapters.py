"""Multi-LoRA residency shared by every engine: which adapter ids are valid, which adapters are
resident, and loading them on demand with an LRU of at most `max_active_adapters`.

An adapter lives in `<adapter_dir>/<adapter_id>/` (the control plane materializes
`adapter_config.json` + `adapter_model.safetensors` there). `AdapterPool` runs on the engine's
asyncio loop, so its bookkeeping needs no locks: a request `acquire`s its adapter before it
joins the batch (loading it first when it is not resident) and `release`s it when the sequence
ends. A resident adapter is evicted only when a slot is needed and nothing uses it; when every
slot is in use, requests for other adapters wait for one to be released instead of failing.
Concurrent requests for an adapter that is loading share that one load.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from modelhost.engine.protocol import AdapterState, GeneratorError, UnknownAdapter

ADAPTER_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
CONFIG_FILE = "adapter_config.json"

# Loads an adapter into the given slot (engine-specific); raises GeneratorError when it can't.
Loader = Callable[[str, Path | None, int], Awaitable[None]]


def resolve_adapter(adapter_dir: Path | None, adapter_id: str) -> Path:
    """The folder of `adapter_id` under `adapter_dir`, or UnknownAdapter. The id is a single
    path component of safe characters and the folder must resolve inside adapter_dir, so a
    request can never make the engine read anything else."""
    unknown = UnknownAdapter(f"The model (adapter) {adapter_id!r} does not exist on this engine.")
    if adapter_dir is None or not ADAPTER_ID.fullmatch(adapter_id) or adapter_id in (".", ".."):
        raise unknown
    root = adapter_dir.resolve()
    folder = (root / adapter_id).resolve()
    if folder.parent != root or not (folder / CONFIG_FILE).is_file():
        raise unknown
    return folder


@dataclass(eq=False)
class _Entry:
    adapter_id: str
    folder: Path | None
    slot: int
    users: int = 0
    loading: asyncio.Task[None] | None = None
    load_seconds: float | None = None


@dataclass
class _Record:
    """What outlives residency (for metrics): loads and the last load time."""

    loads: int = 0
    load_seconds: float | None = None
    load_seconds_total: float = 0.0


class AdapterPool:
    """LRU residency of adapters in `capacity` numbered slots; see the module docstring."""

    def __init__(self, capacity: int, loader: Loader) -> None:
        if capacity < 1:
            raise ValueError("max_active_adapters must be at least 1")
        self.capacity = capacity
        self._loader = loader
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._records: dict[str, _Record] = {}
        self._waiters: list[asyncio.Future[None]] = []  # requests waiting for a free slot
        self.evictions = 0

    @property
    def resident(self) -> int:
        return sum(1 for e in self._entries.values() if e.loading is None)

    def slot_of(self, adapter_id: str) -> int | None:
        e = self._entries.get(adapter_id)
        return None if e is None or e.loading is not None else e.slot

    def states(self) -> tuple[AdapterState, ...]:
        out = []
        for adapter_id, rec in sorted(self._records.items()):
            e = self._entries.get(adapter_id)
            out.append(
                AdapterState(
                    adapter_id=adapter_id,
                    resident=e is not None and e.loading is None,
                    in_use=0 if e is None else e.users,
                    loads=rec.loads,
                    load_seconds=rec.load_seconds,
                    load_seconds_total=rec.load_seconds_total,
                )
            )
        return tuple(out)

    async def acquire(self, adapter_id: str, folder: Path | None) -> int:
        """Make the adapter resident and mark it in use; returns its slot. Waits while it
        loads, or while every slot is in use by other adapters."""
        while True:
            entry = self._entries.get(adapter_id)
            if entry is None:
                slot = self._take_slot()
                if slot is None:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(waiter)
                    continue
                entry = _Entry(adapter_id, folder, slot)
                self._entries[adapter_id] = entry
                entry.loading = asyncio.create_task(self._load(entry), name=f"load-{adapter_id}")
                # Retrieved here so a load nobody waits for any more logs no warning.
                entry.loading.add_done_callback(_consume)
            entry.users += 1
            self._entries.move_to_end(adapter_id)
            if entry.loading is None:
                return entry.slot
            try:
                # Shielded: one client going away must not cancel a load others wait for.
                await asyncio.shield(entry.loading)
            except BaseException:
                entry.users -= 1
                raise
            return entry.slot

    def release(self, adapter_id: str) -> None:
        entry = self._entries.get(adapter_id)
        if entry is None or entry.users <= 0:
            return
        entry.users -= 1
        if entry.users == 0:
            self._notify()

    async def preload(self, adapter_id: str, folder: Path | None) -> None:
        await self.acquire(adapter_id, folder)
        self.release(adapter_id)

    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        for adapter_id, entry in self._entries.items():  # least recently used first
            if entry.users == 0 and entry.loading is None:
                del self._entries[adapter_id]
                self.evictions += 1
                return entry.slot
        return None

    async def _load(self, entry: _Entry) -> None:
        started = time.perf_counter()
        try:
            await self._loader(entry.adapter_id, entry.folder, entry.slot)
        except BaseException as exc:
            # Failed: forget it and give its slot back; every waiter gets the error.
            if self._entries.get(entry.adapter_id) is entry:
                del self._entries[entry.adapter_id]
            self._free.append(entry.slot)
            self._notify()
            if isinstance(exc, GeneratorError | asyncio.CancelledError):
                raise
            message = f"adapter {entry.adapter_id!r} could not be loaded: {exc}"
            raise GeneratorError(message) from exc
        took = time.perf_counter() - started
        entry.load_seconds = took
        entry.loading = None
        rec = self._records.setdefault(entry.adapter_id, _Record())
        rec.loads += 1
        rec.load_seconds = took
        rec.load_seconds_total += took

    def _notify(self) -> None:
        """A slot may have become available: let every waiter try again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
