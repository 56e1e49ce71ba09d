"""Admission and replica choice for one deployment.

Each ready replica takes at most its `max_batch_size` requests at once (the engine's batch);
beyond that requests wait here, in arrival order, in a bounded queue. With no ready replica at
all (standby, or the first replica still starting) requests are *held* the same way and the
pool asks for a replica (the activator path); they go to the first replica that becomes ready.
Routing is least-outstanding-requests among replicas with room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modelhost.domain.routing import ReplicaEndpoint
from modelhost.errors import QueueFull, Unavailable

# Engines whose adapters the gateway loads and unloads through the engine's API (vLLM), rather
# than naming them in `x-adapter-id` for the engine to load itself (adapter_residency.py).
GATEWAY_LOADED_ADAPTERS = frozenset({"vllm"})


@dataclass
class _Slot:
    endpoint: ReplicaEndpoint
    outstanding: int = 0
    routable: bool = True
    # After a failed connection: not routable before this time, whatever snapshots say (the
    # reconciler may list a dead replica for a pass or two before it notices).
    retry_at: float = 0.0
    # The adapters this replica most likely holds: the last ones sent to it, in LRU order,
    # mirroring the engine's own LRU of max_active_adapters. On engines whose adapters the
    # gateway loads (GATEWAY_LOADED_ADAPTERS), exactly the ones it loaded there, in LRU order;
    # adapter_residency.py adds and evicts them.
    adapters: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Gateway-loaded adapters only: loads and unloads in flight, and how many requests hold
    # each adapter (one that is in use is never unloaded).
    loads: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    unloads: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    adapter_users: Counter[str] = field(default_factory=Counter)
    # The replica's context length, once asked (engines without LoRAX routes of their own).
    context_length: int | None = None

    @property
    def gateway_loads_adapters(self) -> bool:
        return self.endpoint.engine in GATEWAY_LOADED_ADAPTERS

    def holds(self, adapter_id: str) -> bool:
        return adapter_id in self.adapters or adapter_id in self.loads

    def touch(self, adapter_id: str) -> None:
        if self.gateway_loads_adapters:
            # Residency follows the loads and unloads themselves; only the recency moves.
            if adapter_id in self.adapters:
                self.adapters.move_to_end(adapter_id)
            return
        self.adapters[adapter_id] = None
        self.adapters.move_to_end(adapter_id)
        while len(self.adapters) > self.endpoint.max_active_adapters:
            self.adapters.popitem(last=False)


@dataclass
class Lease:
    """A request's hold on one replica; release it exactly once."""

    endpoint: ReplicaEndpoint
    slot: _Slot
    queued_s: float
    cold: bool
    released: bool = False
    # The adapter this request holds on the replica (gateway-loaded adapters), until release.
    pinned: str | None = None


@dataclass
class _Waiter:
    future: asyncio.Future[Lease]
    enqueued_at: float
    cold: bool
    adapter_id: str | None


@dataclass
class PoolLimits:
    queue_factor: float
    queue_min: int
    queue_timeout_s: float
    cold_start_timeout_s: float


@dataclass
class DeploymentPool:
    deploy_id: str
    limits: PoolLimits
    on_demand: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _waiters: deque[_Waiter] = field(default_factory=deque)
    last_request_at: float | None = None

    # ---- signals for the autoscaler -------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return sum(s.outstanding for s in self._slots.values())

    @property
    def queued(self) -> int:
        return len(self._waiters) if self._ready_slots() else 0

    @property
    def held(self) -> int:
        return 0 if self._ready_slots() else len(self._waiters)

    def outstanding_on(self, replica_id: str) -> int:
        slot = self._slots.get(replica_id)
        return slot.outstanding if slot else 0

    def any_endpoint(self) -> ReplicaEndpoint | None:
        ready = self._ready_slots()
        return ready[0].endpoint if ready else None

    # ---- snapshot updates -----------------------------------------------------------------
    def update(self, endpoints: Sequence[ReplicaEndpoint]) -> None:
        """Replace the set of routable replicas; leases on removed ones stay valid."""
        fresh: dict[str, _Slot] = {}
        for ep in endpoints:
            slot = self._slots.get(ep.replica_id)
            if slot is None:
                slot = _Slot(ep)
            else:
                slot.endpoint = ep
            slot.routable = self.clock() >= slot.retry_at
            fresh[ep.replica_id] = slot
        for rid, slot in self._slots.items():
            if rid not in fresh:
                slot.routable = False
                if slot.outstanding:
                    fresh[rid] = slot  # keep counting its in-flight work until it drains
        self._slots = fresh
        self._dispatch()

    def mark_unroutable(self, replica_id: str, for_s: float) -> None:
        """The replica failed a connection: send it no work for `for_s` seconds, and after that
        only once a snapshot lists it again."""
        slot = self._slots.get(replica_id)
        if slot is not None:
            slot.routable = False
            slot.retry_at = self.clock() + for_s

    # ---- admission ------------------------------------------------------------------------
    def _ready_slots(self) -> list[_Slot]:
        return [s for s in self._slots.values() if s.routable]

    def _capacity(self) -> int:
        return sum(s.endpoint.max_batch_size for s in self._ready_slots())

    def queue_limit(self) -> int:
        return max(self.limits.queue_min, int(self.limits.queue_factor * self._capacity()))

    def _pick(self, adapter_id: str | None) -> _Slot | None:
        """Least outstanding among replicas with room, preferring for an adapter request the
        replicas that already hold the adapter. When those are full the request goes to the
        least loaded other replica, which loads it: hot adapters spread over replicas."""
        best: _Slot | None = None
        for slot in self._ready_slots():
            if slot.outstanding >= slot.endpoint.max_batch_size:
                continue
            if best is None or self._better(slot, best, adapter_id):
                best = slot
        return best

    @staticmethod
    def _better(a: _Slot, b: _Slot, adapter_id: str | None) -> bool:
        if adapter_id is not None and a.holds(adapter_id) != b.holds(adapter_id):
            return a.holds(adapter_id)
        return a.outstanding < b.outstanding

    def _lease(self, slot: _Slot, queued_s: float, cold: bool, adapter_id: str | None) -> Lease:
        slot.outstanding += 1
        if adapter_id is not None:
            slot.touch(adapter_id)
        return Lease(slot.endpoint, slot, queued_s, cold)

    async def acquire(self, adapter_id: str | None = None, deadline: float | None = None) -> Lease:
        """A slot on a replica, waiting (bounded) in the queue or for a cold start; `deadline`
        (on `clock`) shortens that wait for a request that has already waited."""
        now = self.clock()
        self.last_request_at = now
        if not self._waiters:
            slot = self._pick(adapter_id)
            if slot is not None:
                return self._lease(slot, 0.0, False, adapter_id)
        if len(self._waiters) >= self.queue_limit():
            raise QueueFull(
                f"deployment {self.deploy_id} is at capacity: {self.in_flight} requests running "
                f"and {len(self._waiters)} queued",
                retry_after=1,
            )
        cold = not self._ready_slots()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), now, cold, adapter_id)
        self._waiters.append(waiter)
        if cold:
            self.on_demand(self.deploy_id)
        timeout = self.limits.cold_start_timeout_s if cold else self.limits.queue_timeout_s
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - now))
        try:
            # Not wait_for: on Python 3.11 it returns a result that arrives in the step in which
            # the request is cancelled, and the departed request would go on to the replica.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.future)
        except BaseException as exc:
            # Timed out, or the client went away: withdraw. A grant that raced us goes back.
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())
            else:
                waiter.future.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise self._timeout_error(cold, timeout) from None
            raise

    def _timeout_error(self, cold: bool, timeout: float) -> Unavailable:
        if cold:
            return Unavailable(
                f"deployment {self.deploy_id} has no ready replica yet: a replica is starting "
                f"but was not ready within {timeout:.0f}s; retry shortly",
                code="cold_start_timeout",
                retry_after=10,
            )
        return Unavailable(
            f"deployment {self.deploy_id}: the request waited {timeout:.0f}s in the queue",
            code="queue_timeout",
            retry_after=5,
        )

    def pin(self, lease: Lease, adapter_id: str) -> None:
        """The request holds `adapter_id` on its replica until released: it is not unloaded."""
        if lease.pinned is None:
            lease.pinned = adapter_id
            lease.slot.adapter_users[adapter_id] += 1

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        lease.slot.outstanding -= 1
        if lease.pinned is not None:
            users = lease.slot.adapter_users
            users[lease.pinned] -= 1
            if users[lease.pinned] <= 0:
                del users[lease.pinned]
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free replica capacity to waiting requests, oldest first."""
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.future.done():
                self._waiters.popleft()
                continue
            slot = self._pick(waiter.adapter_id)
            if slot is None:
                return
            self._waiters.popleft()
            queued_s = self.clock() - waiter.enqueued_at
            lease = self._lease(slot, queued_s, waiter.cold, waiter.adapter_id)
            waiter.future.set_result(lease)
