"""The reconcile loop: observe replicas, record what changed, plan, act, publish routes.

Level-triggered and idempotent: every pass derives its actions from the stored desired state and
the backend's latest observations, so a missed pass or a server restart loses nothing.

Seams, and nothing else: a `Backend` (runs replicas), a `RoutingSink` (the gateway's routing
table), a `DesiredStateStore` (the owner's intent in; replica rows, events and statuses out) and
a `Clock`. The reconciler is the only writer of a deployment's status, instances and pending
reason; the API records intent and wakes it.

Threads: a pass runs on the event loop, where the routing sink lives, and all of the
reconciler's own state is touched there only. Store calls run one at a time on the reconciler's
store thread (in order, so events keep their order); backend calls that may block (start forks a
process, stop and drain wait for one, adopt probes) run in worker threads. `observe`,
`mark_draining` and `forget` only read or flip in-memory state and run inline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from modelhost.domain.fair_share import cpu_slots_per_user, owner_cpu_limit
from modelhost.domain.replicas import CPU_TYPE, ReplicaState
from modelhost.orchestrator.backends.base import Backend, ReplicaStartSpec
from modelhost.orchestrator.derived import deployment_statuses, routing_table
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.planner import plan, track_failures
from modelhost.orchestrator.ports import (
    Clock,
    DesiredStateStore,
    RoutingSink,
    StoredDeployment,
    SystemClock,
)
from modelhost.orchestrator.types import (
    Action,
    DesiredDeployment,
    DrainReplica,
    FailureHistory,
    MarkErrored,
    ReplicaObservation,
    ReportPending,
    RestartPolicy,
    StartReplica,
    StopReplica,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# How often a drain looks at the replica's outstanding requests.
DRAIN_POLL_S = 0.2


@dataclass
class _PassActs:
    """What applying one pass's actions did, for the status step and the drains after it."""

    pending: dict[str, tuple[int, str]] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    errored: dict[str, str] = field(default_factory=dict)
    drains: list[DrainReplica] = field(default_factory=list)


@dataclass
class Reconciler:
    backend: Backend
    routing: RoutingSink
    store: DesiredStateStore
    inventory: Inventory
    clock: Clock = field(default_factory=SystemClock)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    # How long a drained replica may finish its in-flight requests before it is signalled.
    drain_timeout_s: float = 30.0
    # CPU slots one user's replicas may hold at once; None: half the server's, rounded up.
    cpu_slots_per_user: int | None = None
    failures: dict[str, FailureHistory] = field(default_factory=dict)
    last_observed: list[ReplicaObservation] = field(default_factory=list)
    # Replicas per deployment that the last pass wanted but could not place (with
    # last_observed: the autoscaler must not mistake them for replicas that are starting).
    last_pending: dict[str, int] = field(default_factory=dict)
    _prev_states: dict[str, ReplicaState] = field(default_factory=dict)
    _draining: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _errored: set[str] = field(default_factory=set)
    _generations: dict[str, int] = field(default_factory=dict)
    _store_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="reconciler-store")
    )

    async def _in_store(self, fn: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, functools.partial(fn, *args))

    # ---- start-up -----------------------------------------------------------------------
    async def adopt(self) -> None:
        """Take back the replicas a previous server process left running, or clean them up."""
        records = await self._in_store(self.store.replica_records)
        result = await asyncio.to_thread(self.backend.adopt, records)
        await self._in_store(self.store.record_adoption, result)

    # ---- one pass -----------------------------------------------------------------------
    async def run_once(self) -> None:
        now = self.clock.time()
        observed = self.backend.observe()
        self.failures = track_failures(self.failures, self._prev_states, observed, self.policy)
        self._prev_states = {o.replica_id: o.state for o in observed}

        def sync_and_read() -> list[StoredDeployment]:
            self.store.record_replicas(observed)
            return self.store.deployments()

        deployments = await self._in_store(sync_and_read)
        self._reset_failures(deployments)
        desired = self._desired(deployments)
        actions = plan(desired, observed, self.inventory, self.failures, now, self.policy)
        acts = _PassActs()
        try:
            await self._apply(actions, acts)
            after = self.backend.observe()
            self.last_observed = after
            self.last_pending = {d: n for d, (n, _) in acts.pending.items() if n > 0}
            statuses = deployment_statuses(
                deployments, observed, after, acts.pending, acts.started, acts.errored
            )
            await self._in_store(self.store.write_statuses, statuses)
        finally:
            # Even after a failure above: a replica marked draining leaves the routing table
            # before anything signals it.
            self.routing.publish(routing_table(deployments, self.backend.observe()))
            for a in acts.drains:
                self._draining[a.replica_id] = asyncio.create_task(self._drain(a))
        # Forget only what was already terminal when failures were counted: a replica that
        # failed since then is counted on the next pass, then forgotten.
        for replica_id, state in self._prev_states.items():
            if state.terminal and replica_id not in self._draining:
                self.backend.forget(replica_id)

    def _desired(self, deployments: Sequence[StoredDeployment]) -> list[DesiredDeployment]:
        per_user = cpu_slots_per_user(self.inventory.total(CPU_TYPE), self.cpu_slots_per_user)
        return [
            DesiredDeployment(
                deploy_id=d.deploy_id,
                generation=d.generation,
                desired_replicas=d.desired_replicas,
                launch=d.launch,
                drain_timeout_s=self.drain_timeout_s,
                owner=d.owner,
                cpu_slot_limit=owner_cpu_limit(d.owner_is_admin, per_user),
            )
            for d in deployments
            if d.should_run and d.launch is not None
        ]

    def _reset_failures(self, deployments: Sequence[StoredDeployment]) -> None:
        """A /start or a config change clears fail_reason: that is a fresh chance."""
        for d in deployments:
            changed = self._generations.get(d.deploy_id, d.generation) != d.generation
            self._generations[d.deploy_id] = d.generation
            if (d.deploy_id in self._errored and d.fail_reason is None) or changed:
                self._errored.discard(d.deploy_id)
                self.failures.pop(d.deploy_id, None)

    async def _apply(self, actions: Sequence[Action], acts: _PassActs) -> None:
        for a in actions:
            if isinstance(a, StartReplica):
                # Shielded: a pass cancelled meanwhile (a leader deposed) never leaves a spawned
                # replica without the row the next leader adopts it by.
                await asyncio.shield(self._start(a))
                acts.started.add(a.deploy_id)
            elif isinstance(a, DrainReplica):
                queued = any(d.replica_id == a.replica_id for d in acts.drains)
                if a.replica_id not in self._draining and not queued:
                    # Out of the live count now; signalled only after the next publish.
                    self.backend.mark_draining(a.replica_id)
                    acts.drains.append(a)
            elif isinstance(a, StopReplica):
                await asyncio.to_thread(self.backend.stop, a.replica_id)
                message = f"replica {a.replica_id}: {a.reason}"
                await self._in_store(self.store.add_event, a.deploy_id, "replica_stopped", message)
            elif isinstance(a, MarkErrored):
                self._errored.add(a.deploy_id)
                acts.errored[a.deploy_id] = a.reason
                await self._in_store(self.store.mark_errored, a.deploy_id, a.reason)
            elif isinstance(a, ReportPending):
                acts.pending[a.deploy_id] = (a.pending, a.reason)

    async def _start(self, a: StartReplica) -> None:
        handle = await asyncio.to_thread(self.backend.start, ReplicaStartSpec.from_action(a))
        await self._in_store(self.store.record_start, a, handle.record)

    async def _drain(self, a: DrainReplica) -> None:
        """The replica has left the routing table: let its in-flight requests finish (bounded),
        then signal the engine, which finishes what it still has."""
        deadline = self.clock.monotonic() + self.drain_timeout_s
        try:
            message = f"replica {a.replica_id}: {a.reason}"
            await self._in_store(self.store.add_event, a.deploy_id, "replica_draining", message)
            while self.clock.monotonic() < deadline:
                if self.routing.outstanding_on(a.deploy_id, a.replica_id) == 0:
                    break
                await self.clock.sleep(DRAIN_POLL_S)
            remaining = max(1.0, deadline - self.clock.monotonic())
            await asyncio.to_thread(self.backend.drain, a.replica_id, remaining)
        except Exception:
            log.exception("draining replica %s failed", a.replica_id)
        finally:
            self._draining.pop(a.replica_id, None)

    async def wait_drains(self) -> None:
        if self._draining:
            await asyncio.gather(*self._draining.values(), return_exceptions=True)

    def abandon_drains(self) -> None:
        """Stop waiting on drains (this process no longer leads): the replicas keep running,
        and the next leader, which adopts them, drains them again if they are still surplus."""
        for task in list(self._draining.values()):
            task.cancel()

    def close(self) -> None:
        """Let the store thread go (after the work already handed to it)."""
        self._store_thread.shutdown(wait=True)
