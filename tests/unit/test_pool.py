"""Admission: per-replica concurrency = max_batch_size, FIFO queue, bounded, cold holds."""

from __future__ import annotations

import asyncio

import pytest

from modelhost.domain.routing import ReplicaEndpoint
from modelhost.errors import QueueFull, Unavailable
from modelhost.gateway.pool import DeploymentPool, PoolLimits
from modelhost.web.errors import status_of


def ep(rid: str, mbs: int = 2) -> ReplicaEndpoint:
    return ReplicaEndpoint(rid, "d1", f"http://127.0.0.1/{rid}", mbs, 1)


def make_pool(queue_min: int = 4, queue_factor: float = 0.0, cold_timeout: float = 5.0):  # type: ignore[no-untyped-def]
    demands: list[str] = []
    pool = DeploymentPool(
        "d1",
        PoolLimits(queue_factor, queue_min, queue_timeout_s=5.0, cold_start_timeout_s=cold_timeout),
        demands.append,
    )
    return pool, demands


async def test_least_outstanding_and_batch_cap() -> None:
    pool, _ = make_pool()
    pool.update([ep("a"), ep("b")])
    leases = [await pool.acquire() for _ in range(4)]
    assert sorted(lease.endpoint.replica_id for lease in leases) == ["a", "a", "b", "b"]
    assert pool.in_flight == 4
    # Both replicas are at max_batch_size: the next one waits.
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done() and pool.queued == 1
    pool.release(leases[1])
    lease = await asyncio.wait_for(waiter, 1)
    assert lease.endpoint.replica_id == leases[1].endpoint.replica_id
    assert lease.queued_s >= 0 and not lease.cold


async def test_fifo_order() -> None:
    pool, _ = make_pool()
    pool.update([ep("a", mbs=1)])
    first = await pool.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        lease = await pool.acquire()
        order.append(i)
        pool.release(lease)

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    pool.release(first)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_queue_full_is_429_with_retry_after() -> None:
    pool, _ = make_pool(queue_min=2)
    pool.update([ep("a", mbs=1)])
    await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as exc:
        await pool.acquire()
    assert status_of(exc.value) == 429 and exc.value.retry_after
    for w in waiters:
        w.cancel()


async def test_cold_request_is_held_and_asks_for_a_replica() -> None:
    pool, demands = make_pool()
    held = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert demands == ["d1"] and pool.held == 1 and pool.queued == 0
    pool.update([ep("a")])
    lease = await asyncio.wait_for(held, 1)
    assert lease.cold and lease.endpoint.replica_id == "a"


async def test_cold_timeout_is_503_and_leaves_no_waiter() -> None:
    pool, _ = make_pool(cold_timeout=0.05)
    with pytest.raises(Unavailable) as exc:
        await pool.acquire()
    assert status_of(exc.value) == 503 and exc.value.retry_after
    assert pool.held == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    pool, _ = make_pool()
    pool.update([ep("a", mbs=1)])
    first = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    pool.release(first)
    assert pool.in_flight == 0
    again = await asyncio.wait_for(pool.acquire(), 1)
    assert again.endpoint.replica_id == "a"


async def test_removed_replica_keeps_counting_until_released() -> None:
    pool, _ = make_pool()
    pool.update([ep("a")])
    lease = await pool.acquire()
    pool.update([])
    assert pool.outstanding_on("a") == 1 and pool.held == 0
    pool.release(lease)
    assert pool.outstanding_on("a") == 0
