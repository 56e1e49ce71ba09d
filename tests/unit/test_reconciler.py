"""The reconciler through its seams: a fake backend, a fake clock, a fake routing sink and a
desired-state store in memory. No process, no database, no sleep: each test is a script of
passes (`await world.step()`) and what the backend's replicas do in between."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelhost.domain.replicas import ReplicaState
from modelhost.domain.status import DesiredState
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.reconciler import DRAIN_POLL_S, Reconciler
from modelhost.orchestrator.types import RestartPolicy
from tests.fake_backend import FakeBackend, Survivor
from tests.orchestrator_fakes import GPU, FakeClock, FakeRouting, MemoryStore, Row

POLICY = RestartPolicy(backoff_base_s=1.0, backoff_max_s=8.0, max_start_failures=3)
DRAIN_TIMEOUT_S = 10.0
FATAL = (
    "could not download meta-llama/Llama-2-7b-chat-hf: no network access to the Hugging Face Hub"
)


@dataclass
class World:
    clock: FakeClock
    backend: FakeBackend
    routing: FakeRouting
    store: MemoryStore
    reconciler: Reconciler

    async def step(self, drains: bool = True) -> None:
        """One pass, then (unless told not to) let the drains it began run to their end."""
        await self.reconciler.run_once()
        if drains:
            await self.reconciler.wait_drains()

    async def until_ready(self, deploy_id: str) -> str:
        """Pass, make the replica it started ready, pass: the id of that replica."""
        await self.step()
        (rid,) = [
            r for r in self.backend.ids(ReplicaState.STARTING) if r.startswith(deploy_id + "-")
        ]
        self.backend.ready(rid)
        self.clock.advance(1)
        await self.step()
        return rid


def make_world(
    gpus: str = f"{GPU}:2", store: MemoryStore | None = None, backend: FakeBackend | None = None
) -> World:
    clock = FakeClock()
    backend = backend or FakeBackend(clock.time)
    backend.clock = clock.time
    routing = FakeRouting(backend)
    store = store or MemoryStore()
    reconciler = Reconciler(
        backend=backend,
        routing=routing,
        store=store,
        inventory=Inventory.build([], gpus, cpu_slots=2),
        clock=clock,
        policy=POLICY,
        drain_timeout_s=DRAIN_TIMEOUT_S,
    )
    return World(clock, backend, routing, store, reconciler)


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world()
    yield w
    w.reconciler.close()


async def test_start_then_ready_routes_the_replica(world: World) -> None:
    world.store.add(Row("d1"))
    await world.step()
    (rid,) = world.backend.ids()
    assert world.backend.state(rid) == ReplicaState.STARTING
    assert world.backend.specs[rid].devices == (f"{GPU}#0",)
    assert world.store.replicas[rid].state == "starting"
    assert world.store.deps["d1"].status == "initializing"
    assert world.routing.routed == {}

    world.backend.ready(rid)
    await world.step()
    row = world.store.deps["d1"]
    assert (row.status, row.instances_running, row.instances_pending) == ("ready", 1, 0)
    assert world.routing.routed == {"d1": [rid]}
    (endpoint,) = world.routing.endpoints["d1"]
    assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.max_batch_size == 8
    assert world.store.statuses("d1") == ["pending", "initializing", "ready"]
    assert world.store.kinds("d1") == ["replica_starting", "status", "replica_ready", "status"]

    # Level-triggered: more passes change nothing.
    await world.step()
    assert world.backend.calls == [("start", rid)]
    assert world.store.statuses("d1") == ["pending", "initializing", "ready"]


async def test_crash_loop_restarts_after_a_capped_exponential_backoff(world: World) -> None:
    world.store.add(Row("d1"))
    rid = await world.until_ready("d1")
    waits = []
    for _ in range(5):
        # Crashes right after becoming ready: a crash loop, but never a failed start.
        world.backend.crash(rid, "replica crashed (killed by SIGKILL)", exit_code=-9)
        await world.step()
        assert world.backend.ids(ReplicaState.STARTING) == []
        # Serving nothing, started before: initializing again (not pending).
        assert world.store.deps["d1"].status == "initializing"
        waited = 0.0
        while not world.backend.ids(ReplicaState.STARTING):
            world.clock.advance(0.5)
            waited += 0.5
            await world.step()
        waits.append(waited)
        (rid,) = world.backend.ids(ReplicaState.STARTING)
        world.backend.ready(rid)
        await world.step()
        assert world.store.deps["d1"].status == "ready"
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert world.store.deps["d1"].fail_reason is None
    assert world.store.kinds("d1").count("replica_failed") == 5


async def test_repeated_start_failures_end_errored_with_the_engine_reason(world: World) -> None:
    world.store.add(Row("d1"))
    for n in range(POLICY.max_start_failures):
        await world.step()
        (rid,) = world.backend.ids(ReplicaState.STARTING)
        world.backend.crash(rid, FATAL, exit_code=3)
        world.clock.advance(POLICY.backoff_s(n + 1))
    await world.step()
    row = world.store.deps["d1"]
    assert (row.status, row.fail_reason) == ("errored", FATAL)
    assert ("d1", "errored", FATAL) in world.store.events
    assert world.store.statuses("d1")[-1] == "errored"

    # Errored starts nothing more, however long it waits.
    world.clock.advance(3600)
    await world.step()
    await world.step()
    assert [c for c in world.backend.calls if c[0] == "start"] == [
        ("start", r) for r in world.store.replicas
    ]
    assert len(world.store.replicas) == POLICY.max_start_failures

    # /start clears fail_reason (the API's write): a fresh chance, with a fresh history.
    row.fail_reason = None
    await world.step()
    assert len(world.backend.ids(ReplicaState.STARTING)) == 1
    assert world.store.deps["d1"].status == "initializing"


async def test_a_replica_that_cannot_be_spawned_counts_as_a_failed_start(world: World) -> None:
    unspawnable = "could not start the engine: the builtin engine needs weights"
    world.backend.spawn_failures["d1"] = unspawnable
    world.store.add(Row("d1"))
    for n in range(POLICY.max_start_failures):
        await world.step()
        world.clock.advance(POLICY.backoff_s(n + 1))
    await world.step()
    row = world.store.deps["d1"]
    assert row.status == "errored"
    assert row.fail_reason == unspawnable


async def test_scale_down_drains_after_leaving_routing_and_waits_for_requests(
    world: World,
) -> None:
    row = world.store.add(Row("d1", desired_replicas=2))
    await world.step()
    both = world.backend.ids()
    for rid in both:
        world.backend.ready(rid)
        # Each still has two requests, then one, then none.
        world.routing.outstanding[rid] = [2, 1, 0]
    await world.step()
    assert sorted(world.routing.routed["d1"]) == sorted(both)

    row.desired_replicas = 1
    t0 = world.clock.t
    await world.step(drains=False)
    (gone,) = world.backend.ids(ReplicaState.DRAINING)
    (kept,) = world.backend.ids(ReplicaState.READY)
    assert world.routing.routed == {"d1": [kept]}
    assert ("drain", gone) not in world.backend.calls
    assert world.store.deps["d1"].status == "ready"  # one replica still serves

    await world.reconciler.wait_drains()
    # Signalled only after a table without it was published, and once its requests were done.
    marked = world.backend.calls.index(("mark_draining", gone))
    published_at, table = next((n, t) for n, t in world.routing.tables if n > marked)
    assert gone not in table["d1"]
    assert world.backend.calls.index(("drain", gone)) >= published_at
    assert world.clock.t - t0 == pytest.approx(2 * DRAIN_POLL_S)
    assert world.backend.drain_timeouts[gone] == pytest.approx(DRAIN_TIMEOUT_S - 2 * DRAIN_POLL_S)
    assert ("d1", "replica_draining", f"replica {gone}: scaling down to 1 replicas") in (
        world.store.events
    )
    await world.step()
    assert world.store.replicas[gone].exited and world.backend.ids() == [kept]


async def test_a_drain_waits_for_requests_no_longer_than_the_drain_timeout(
    world: World,
) -> None:
    row = world.store.add(Row("d1"))
    rid = await world.until_ready("d1")
    world.routing.outstanding[rid] = [5]  # never finishes
    row.desired_state = DesiredState.STOPPED
    t0 = world.clock.t
    await world.step()
    assert world.clock.t - t0 >= DRAIN_TIMEOUT_S
    assert world.backend.drain_timeouts[rid] == 1.0  # the minimum grace left to the engine
    assert world.backend.state(rid) == ReplicaState.STOPPED
    assert world.store.deps["d1"].status == "stopped"


async def test_delete_drains_ready_stops_starting_and_ends_deleted(world: World) -> None:
    row = world.store.add(Row("d1", desired_replicas=2))
    await world.step()
    ready, starting = world.backend.ids()
    world.backend.ready(ready)
    await world.step()
    assert world.store.deps["d1"].status == "ready"

    row.desired_state, row.deleted = DesiredState.DELETED, True
    await world.step(drains=False)
    # The one still starting serves nothing: stopped at once. The ready one drains.
    assert ("stop", starting) in world.backend.calls
    assert world.backend.state(ready) == ReplicaState.DRAINING
    assert world.routing.routed == {}
    assert world.store.deps["d1"].status == "deleted"
    await world.reconciler.wait_drains()
    assert world.backend.state(ready) == ReplicaState.STOPPED

    await world.step()
    await world.step()
    assert all(r.exited for r in world.store.replicas.values())
    assert world.store.deployments() == []  # nothing left to reconcile
    assert world.store.statuses("d1") == ["pending", "initializing", "ready", "deleted"]


async def test_a_deleted_deployment_without_replicas_is_marked_deleted_once(world: World) -> None:
    # E.g. its owner's account was deleted while it stood at zero replicas.
    world.store.add(Row("d1", desired_replicas=0, status="standby"))
    await world.step()
    row = world.store.deps["d1"]
    row.desired_state, row.deleted = DesiredState.DELETED, True
    await world.step()
    await world.step()
    assert world.store.statuses("d1") == ["standby", "deleted"]
    assert world.backend.calls == []


async def test_rolling_replacement_starts_the_new_replica_before_draining_the_old(
    world: World,
) -> None:
    row = world.store.add(Row("d1"))
    old = await world.until_ready("d1")
    row.generation = 2
    await world.step()
    (new,) = world.backend.ids(ReplicaState.STARTING)
    assert world.backend.specs[new].generation == 2
    assert world.backend.state(old) == ReplicaState.READY
    assert world.routing.routed == {"d1": [old]}  # the old one serves meanwhile
    assert world.store.deps["d1"].status == "updating"

    world.backend.ready(new)
    await world.step(drains=False)
    assert world.backend.state(old) == ReplicaState.DRAINING
    assert world.routing.routed == {"d1": [new]}
    assert world.store.deps["d1"].status == "ready"
    await world.reconciler.wait_drains()
    assert world.backend.state(old) == ReplicaState.STOPPED
    # Serving capacity never dropped: every published table routed d1 once it was ready.
    ready_at = next(i for i, (_, t) in enumerate(world.routing.tables) if t.get("d1"))
    assert all(t.get("d1") for _, t in world.routing.tables[ready_at:])


async def test_rolling_replacement_without_a_spare_device_stops_the_old_first() -> None:
    w = make_world(gpus=f"{GPU}:1")
    try:
        row = w.store.add(Row("d1"))
        old = await w.until_ready("d1")
        row.generation = 2
        await w.step(drains=False)
        assert w.backend.state(old) == ReplicaState.DRAINING
        assert w.backend.ids(ReplicaState.STARTING) == []
        row_now = w.store.deps["d1"]
        # Being replaced, not short of capacity: requests are held, not refused.
        assert row_now.status == "updating"
        assert row_now.pending_reason == (
            f"waiting for a replica being replaced to stop (1 of 1 replicas pending: only 0 "
            f"free {GPU} GPUs)"
        )
        await w.reconciler.wait_drains()
        await w.step()
        (new,) = w.backend.ids(ReplicaState.STARTING)
        assert w.backend.specs[new].devices == (f"{GPU}#0",)  # the device the old one freed
        assert w.store.deps["d1"].status == "initializing"
        w.backend.ready(new)
        await w.step()
        assert (w.store.deps["d1"].status, w.store.deps["d1"].pending_reason) == ("ready", None)
        assert w.store.statuses("d1") == [
            *("pending", "initializing", "ready"),
            *("updating", "initializing", "ready"),
        ]
    finally:
        w.reconciler.close()


async def test_replicas_that_do_not_fit_are_pending_with_the_reason(world: World) -> None:
    world.store.add(Row("d1", desired_replicas=3))
    world.store.add(Row("d2"))
    await world.step()
    d1, d2 = world.store.deps["d1"], world.store.deps["d2"]
    assert len(world.backend.ids()) == 2  # both devices went to d1 (deploy_id order)
    reason = f"1 of 3 replicas pending: only 2 free {GPU} GPUs"
    assert (d1.status, d1.instances_pending, d1.pending_reason) == ("initializing", 1, reason)
    # Nothing of d2 could start: pending, with why.
    assert d2.status == "pending" and d2.instances_pending == 1
    assert d2.pending_reason == f"1 of 1 replicas pending: only 0 free {GPU} GPUs"
    assert ("d2", "pending", d2.pending_reason) in world.store.events
    assert world.reconciler.last_pending == {"d1": 1, "d2": 1}

    # Capacity comes back: d1 scales down to 1, and d2 gets the freed device.
    d1.desired_replicas = 1
    await world.step()
    await world.step()
    assert (d2.instances_pending, d2.pending_reason, d2.status) == (0, None, "initializing")
    assert world.reconciler.last_pending == {}


async def test_adoption_after_a_restart_takes_back_live_replicas_without_duplicates() -> None:
    first = make_world()
    first.store.add(Row("d1", desired_replicas=2))
    await first.step()
    survivor, crashed = first.backend.ids()
    first.backend.ready(survivor)
    first.backend.ready(crashed)
    await first.step()
    first.reconciler.close()

    # A new server process over the same store. `survivor` still runs; `crashed` is gone.
    backend = FakeBackend()
    backend.survivors[survivor] = Survivor(ReplicaState.READY)
    second = make_world(store=first.store, backend=backend)
    try:
        await second.reconciler.adopt()
        assert second.backend.ids() == [survivor]
        assert second.store.replicas[crashed].exited
        assert second.store.replicas[crashed].fail_reason == "its process is gone"
        assert ("d1", "replica_adopted", survivor) in second.store.events

        await second.step()
        # One replacement for the one that is gone; the adopted one serves on.
        (replacement,) = second.backend.ids(ReplicaState.STARTING)
        assert second.routing.routed == {"d1": [survivor]}
        assert second.store.deps["d1"].status == "ready"

        # Adopting again (the same records) never makes a second copy.
        await second.reconciler.adopt()
        await second.step()
        assert second.backend.ids() == [survivor, replacement]
        assert [c for c in second.backend.calls if c[0] == "start"] == [("start", replacement)]
    finally:
        second.reconciler.close()


async def test_a_survivor_that_does_not_answer_is_cleaned_and_replaced() -> None:
    first = make_world()
    first.store.add(Row("d1"))
    rid = await first.until_ready("d1")
    first.reconciler.close()
    backend = FakeBackend()
    backend.survivors[rid] = Survivor(ReplicaState.READY, answers_health=False)
    second = make_world(store=first.store, backend=backend)
    try:
        await second.reconciler.adopt()
        assert second.store.replicas[rid].fail_reason == "it did not answer its health check"
        await second.step()
        assert len(second.backend.ids(ReplicaState.STARTING)) == 1
    finally:
        second.reconciler.close()


async def test_store_work_and_blocking_backend_calls_run_off_the_event_loop(
    world: World,
) -> None:
    loop_thread = threading.get_ident()
    started_in: list[int] = []
    start = world.backend.start

    def start_and_note(spec):  # type: ignore[no-untyped-def]
        started_in.append(threading.get_ident())
        return start(spec)

    world.backend.start = start_and_note  # type: ignore[method-assign]
    world.store.add(Row("d1"))
    await world.until_ready("d1")
    assert world.store.threads and loop_thread not in world.store.threads
    assert started_in and loop_thread not in started_in


async def test_a_failed_status_write_still_takes_a_draining_replica_out_of_routing(
    world: World,
) -> None:
    row = world.store.add(Row("d1"))
    rid = await world.until_ready("d1")
    row.desired_state = DesiredState.STOPPED
    world.store.fail_status_writes = True
    with pytest.raises(RuntimeError, match="the database is gone"):
        await world.reconciler.run_once()
    assert world.routing.routed == {}
    await world.reconciler.wait_drains()
    assert world.backend.state(rid) == ReplicaState.STOPPED
