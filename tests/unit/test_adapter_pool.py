"""Adapter residency shared by the engines: safe id resolution and the LRU `AdapterPool`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelhost.engine.adapters import AdapterPool, resolve_adapter
from modelhost.engine.protocol import GeneratorError, UnknownAdapter


def make_folder(root: Path, adapter_id: str) -> Path:
    folder = root / adapter_id
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_resolve_finds_only_adapter_folders_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    folder = make_folder(root, "a1b2c3d4e5f60718")
    assert resolve_adapter(root, "a1b2c3d4e5f60718") == folder.resolve()
    (root / "empty").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "adapter_config.json").write_text("{}")
    (root / "link").symlink_to(tmp_path / "outside")
    for bad in ("missing", "empty", "..", ".", "../outside", "a/b", "", "x" * 200, "link"):
        with pytest.raises(UnknownAdapter):
            resolve_adapter(root, bad)
    with pytest.raises(UnknownAdapter):
        resolve_adapter(None, "a1b2c3d4e5f60718")


class Loads:
    """A loader that records calls and can be held open, like a slow disk."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: set[str] = set()

    async def __call__(self, adapter_id: str, folder: Path | None, slot: int) -> None:
        self.calls.append((adapter_id, slot))
        await self.gate.wait()
        if adapter_id in self.fail:
            raise GeneratorError(f"cannot load {adapter_id}")


async def test_lru_evicts_the_least_recently_used_idle_adapter() -> None:
    loads = Loads()
    pool = AdapterPool(2, loads)
    for name in ("a", "b"):
        await pool.acquire(name, None)
        pool.release(name)
    await pool.acquire("a", None)  # a is now the most recently used
    pool.release("a")
    slot_c = await pool.acquire("c", None)  # evicts b, reuses its slot
    pool.release("c")
    assert loads.calls == [("a", 0), ("b", 1), ("c", 1)] and slot_c == 1
    assert pool.slot_of("b") is None and pool.slot_of("a") == 0 and pool.evictions == 1
    states = {s.adapter_id: s for s in pool.states()}
    assert not states["b"].resident and states["a"].resident and states["c"].resident
    assert states["a"].loads == 1 and states["a"].load_seconds is not None
    assert pool.resident == 2


async def test_concurrent_requests_share_one_load() -> None:
    loads = Loads()
    loads.gate.clear()
    pool = AdapterPool(4, loads)
    waiters = [asyncio.create_task(pool.acquire("a", None)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert pool.slot_of("a") is None  # still loading
    loads.gate.set()
    assert await asyncio.gather(*waiters) == [0] * 5
    assert loads.calls == [("a", 0)]
    assert [s.in_use for s in pool.states()] == [5]


async def test_an_adapter_in_use_is_never_evicted_and_others_wait_for_a_slot() -> None:
    loads = Loads()
    pool = AdapterPool(1, loads)
    await pool.acquire("a", None)  # in use
    waiting = asyncio.create_task(pool.acquire("b", None))
    await asyncio.sleep(0.01)
    assert not waiting.done() and pool.slot_of("a") == 0  # a stays; b waits, not fails
    pool.release("a")
    assert await asyncio.wait_for(waiting, 5) == 0
    assert pool.slot_of("a") is None and pool.slot_of("b") == 0


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    loads = Loads()
    loads.gate.clear()
    pool = AdapterPool(2, loads)
    first = asyncio.create_task(pool.acquire("a", None))
    second = asyncio.create_task(pool.acquire("a", None))
    await asyncio.sleep(0.01)
    first.cancel()
    loads.gate.set()
    assert await second == 0
    assert [s.in_use for s in pool.states()] == [1]  # only the second holds it


async def test_a_failed_load_reaches_every_waiter_and_frees_the_slot() -> None:
    loads = Loads()
    loads.fail.add("bad")
    pool = AdapterPool(1, loads)
    results = await asyncio.gather(
        pool.acquire("bad", None), pool.acquire("bad", None), return_exceptions=True
    )
    assert all(isinstance(r, GeneratorError) for r in results)
    assert await pool.acquire("good", None) == 0  # the slot came back
    assert loads.calls == [("bad", 0), ("good", 0)]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdapterPool(0, Loads())
