"""The reconcile loop: observe replicas, record what changed, plan, act, publish routes.

Level-triggered and idempotent: every pass derives its actions from the stored desired state and
the backend's latest observations, so a missed pass or a server restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from modelhost.adapters.files import adapters_root
from modelhost.domain.deployments import DEFAULT_MAX_ACTIVE_ADAPTERS
from modelhost.domain.fair_share import cpu_slots_per_user, owner_cpu_limit
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.domain.status import DesiredState, ReplicaCounts, StatusInputs, derive_status
from modelhost.orchestrator.backends.base import Backend, ReplicaRecord, ReplicaStartSpec
from modelhost.orchestrator.launch import desired_deployment, preloaded_adapter_ids
from modelhost.orchestrator.planner import plan, track_failures
from modelhost.orchestrator.replica_rows import record_start, sync_rows
from modelhost.orchestrator.types import (
    CPU_TYPE,
    Action,
    DrainReplica,
    FailureHistory,
    MarkErrored,
    ReplicaObservation,
    ReplicaState,
    ReportPending,
    RestartPolicy,
    StartReplica,
    StopReplica,
)
from modelhost.services import Services
from modelhost.store import deployments as store
from modelhost.store.clock import utcnow
from modelhost.store.tables import Deployment, User

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.2


class RoutingSink(Protocol):
    """The gateway side, as the orchestrator sees it (the two never import each other)."""

    def publish(self, table: Mapping[str, Sequence[ReplicaEndpoint]]) -> None: ...

    def outstanding_on(self, deploy_id: str, replica_id: str) -> int: ...


@dataclass
class Reconciler:
    services: Services
    backend: Backend
    routing: RoutingSink
    policy: RestartPolicy
    clock: Callable[[], float] = time.time
    # CPU slots one user's replicas may hold at once; None: half the server's, rounded up.
    cpu_slots_per_user: int | None = None
    failures: dict[str, FailureHistory] = field(default_factory=dict)
    _prev_states: dict[str, ReplicaState] = field(default_factory=dict)
    _draining: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _errored: set[str] = field(default_factory=set)
    _generations: dict[str, int] = field(default_factory=dict)
    last_observed: list[ReplicaObservation] = field(default_factory=list)
    # Replicas per deployment that the last pass wanted but could not place (with
    # last_observed: the autoscaler must not mistake them for replicas that are starting).
    last_pending: dict[str, int] = field(default_factory=dict)

    # ---- start-up -----------------------------------------------------------------------
    def adopt(self) -> None:
        """Take back the replicas a previous server process left running, or clean them up."""
        with self.services.db.session() as s:
            rows = store.live_replica_rows(s)
            records = []
            for r in rows:
                try:
                    records.append(
                        ReplicaRecord(
                            replica_id=r.id,
                            deploy_id=r.deploy_id,
                            generation=r.generation,
                            pid=int(r.pid or 0),
                            port=int(r.port or 0),
                            log_path=r.log_path or "",
                            devices=tuple(r.devices),
                            proc_start_ticks=int(r.proc_start_time or 0),
                            started_at=r.started_at.timestamp(),
                        )
                    )
                except (TypeError, ValueError):
                    r.exited_at, r.state = utcnow(), ReplicaState.STOPPED.value
            result = self.backend.adopt(records)
            cleaned = dict(result.cleaned)
            for r in rows:
                if r.id in cleaned:
                    r.exited_at, r.state = utcnow(), ReplicaState.STOPPED.value
                    r.fail_reason = cleaned[r.id]
                    store.add_event(
                        s, r.deploy_id, "replica_cleaned", f"replica {r.id}: {cleaned[r.id]}"
                    )
                elif r.id in result.adopted:
                    store.add_event(
                        s, r.deploy_id, "replica_adopted", f"replica {r.id} adopted after restart"
                    )

    # ---- one pass -----------------------------------------------------------------------
    async def run_once(self) -> None:
        now = self.clock()
        observed = self.backend.observe()
        self.failures = track_failures(self.failures, self._prev_states, observed, self.policy)
        self._prev_states = {o.replica_id: o.state for o in observed}
        adapter_dir = str(adapters_root(self.services.settings.data_dir))
        per_user = cpu_slots_per_user(
            self.services.inventory.total(CPU_TYPE), self.cpu_slots_per_user
        )
        with self.services.db.session() as s:
            deployments = store.live_deployments(s)
            owners = {d.id: store.owner_name(s, d) for d in deployments}
            admins = {d.id: _is_admin(s, d) for d in deployments}
            sync_rows(s, observed)
            self._reset_failures(deployments)
            desired = [
                desired_deployment(
                    d,
                    owners[d.id],
                    self.services.catalog,
                    self.services.secrets,
                    self.services.settings.drain_timeout_s,
                    adapter_dir,
                    preloaded_adapter_ids(s, d),
                    owner_cpu_limit(admins[d.id], per_user),
                )
                for d in deployments
                if d.desired_state == DesiredState.RUNNING.value and d.fail_reason is None
            ]
        actions = plan(desired, observed, self.services.inventory, self.failures, now, self.policy)
        pending = await self._apply(actions)
        planned, observed = observed, self.backend.observe()
        self.last_observed = observed
        self.last_pending = {d: n for d, (n, _) in pending.items() if n > 0}
        with self.services.db.session() as s:
            self._update_statuses(s, observed, pending, planned)
        self.routing.publish(self._routing_table(observed))
        # Forget only what was already terminal when failures were counted: a replica that
        # failed since then is counted on the next pass, then forgotten.
        for replica_id, state in self._prev_states.items():
            if state.terminal and replica_id not in self._draining:
                self.backend.forget(replica_id)

    def _reset_failures(self, deployments: Sequence[Deployment]) -> None:
        """A /start or a config change clears fail_reason: that is a fresh chance."""
        for d in deployments:
            changed = self._generations.get(d.id, d.generation) != d.generation
            self._generations[d.id] = d.generation
            if (d.id in self._errored and d.fail_reason is None) or changed:
                self._errored.discard(d.id)
                self.failures.pop(d.id, None)

    async def _apply(self, actions: Sequence[Action]) -> dict[str, tuple[int, str]]:
        pending: dict[str, tuple[int, str]] = {}
        for a in actions:
            if isinstance(a, StartReplica):
                handle = self.backend.start(ReplicaStartSpec.from_action(a))
                with self.services.db.session() as s:
                    record_start(s, a, handle.record)
            elif isinstance(a, DrainReplica):
                if a.replica_id not in self._draining:
                    self.backend.mark_draining(a.replica_id)
                    self._draining[a.replica_id] = asyncio.create_task(
                        self._drain(a.deploy_id, a.replica_id, a.reason)
                    )
            elif isinstance(a, StopReplica):
                await asyncio.to_thread(self.backend.stop, a.replica_id)
                with self.services.db.session() as s:
                    store.add_event(
                        s, a.deploy_id, "replica_stopped", f"replica {a.replica_id}: {a.reason}"
                    )
            elif isinstance(a, MarkErrored):
                self._errored.add(a.deploy_id)
                with self.services.db.session() as s:
                    dep = s.get(Deployment, a.deploy_id)
                    if dep is not None:
                        dep.fail_reason = a.reason
                        store.add_event(s, a.deploy_id, "errored", a.reason)
            elif isinstance(a, ReportPending):
                pending[a.deploy_id] = (a.pending, a.reason)
        return pending

    async def _drain(self, deploy_id: str, replica_id: str, reason: str) -> None:
        """Stop routing first (the replica left the snapshot), let in-flight requests finish
        (bounded), then signal the engine, which finishes what it still has."""
        timeout = self.services.settings.drain_timeout_s
        deadline = time.monotonic() + timeout
        try:
            with self.services.db.session() as s:
                store.add_event(s, deploy_id, "replica_draining", f"replica {replica_id}: {reason}")
            while time.monotonic() < deadline:
                if self.routing.outstanding_on(deploy_id, replica_id) == 0:
                    break
                await asyncio.sleep(DRAIN_POLL_S)
            remaining = max(1.0, deadline - time.monotonic())
            await asyncio.to_thread(self.backend.drain, replica_id, remaining)
        except Exception:
            log.exception("draining replica %s failed", replica_id)
        finally:
            self._draining.pop(replica_id, None)

    def _update_statuses(
        self,
        s: Session,
        observed: Sequence[ReplicaObservation],
        pending: Mapping[str, tuple[int, str]],
        planned: Sequence[ReplicaObservation] = (),
    ) -> None:
        """`pending` was planned from `planned`, an observation taken before this pass's
        actions; `observed` is taken after them. A replica that finished draining in between
        freed its device too late for this pass's plan: it still counts as draining here, so
        the deployment reads as being replaced (requests held), not as short of capacity."""
        by_dep: dict[str, list[ReplicaObservation]] = {}
        for o in observed:
            by_dep.setdefault(o.deploy_id, []).append(o)
        draining_ids: dict[str, set[str]] = {}
        for o in (*planned, *observed):
            if o.state == ReplicaState.DRAINING:
                draining_ids.setdefault(o.deploy_id, set()).add(o.replica_id)
        started = store.deployments_with_replicas(s)
        for dep in store.live_deployments(s):
            reps = by_dep.get(dep.id, [])
            counts = ReplicaCounts(
                ready=sum(o.state == ReplicaState.READY for o in reps),
                starting=sum(o.state == ReplicaState.STARTING for o in reps),
                draining=len(draining_ids.get(dep.id, ())),
                ready_current=sum(
                    o.state == ReplicaState.READY and o.generation == dep.generation for o in reps
                ),
                ever_started=dep.id in started,
                pending=pending.get(dep.id, (0, None))[0],
            )
            status = derive_status(
                StatusInputs(
                    DesiredState(dep.desired_state),
                    dep.desired_replicas,
                    counts,
                    dep.fail_reason,
                )
            ).value
            n_pending, reason = pending.get(dep.id, (0, None))
            if dep.desired_state != DesiredState.RUNNING.value:
                n_pending, reason = 0, None
            elif reason and counts.draining:
                # The device it waits for is held by its own replica being replaced.
                reason = f"waiting for a replica being replaced to stop ({reason})"
            if status != dep.status:
                store.add_event(s, dep.id, "status", f"{dep.status} -> {status}")
                dep.status = status
                dep.updated_at = utcnow()
            if (counts.ready, n_pending, reason) != (
                dep.instances_running,
                dep.instances_pending,
                dep.pending_reason,
            ):
                if reason and reason != dep.pending_reason:
                    store.add_event(s, dep.id, "pending", reason)
                dep.instances_running, dep.instances_pending = counts.ready, n_pending
                dep.pending_reason = reason

    def _routing_table(
        self, observed: Sequence[ReplicaObservation]
    ) -> dict[str, list[ReplicaEndpoint]]:
        with self.services.db.session() as s:
            limits = {
                d.id: (
                    int(d.config["max_batch_size"]),
                    int(d.config.get("max_active_adapters", DEFAULT_MAX_ACTIVE_ADAPTERS)),
                )
                for d in store.live_deployments(s)
            }
        table: dict[str, list[ReplicaEndpoint]] = {}
        for o in observed:
            if o.state != ReplicaState.READY or o.base_url is None or o.deploy_id not in limits:
                continue
            batch, adapters = limits[o.deploy_id]
            table.setdefault(o.deploy_id, []).append(
                ReplicaEndpoint(
                    o.replica_id, o.deploy_id, o.base_url, batch, o.generation, adapters
                )
            )
        return table

    async def wait_drains(self) -> None:
        if self._draining:
            await asyncio.gather(*self._draining.values(), return_exceptions=True)


def _is_admin(s: Session, dep: Deployment) -> bool:
    owner = s.get(User, dep.owner_id)
    return owner is not None and owner.is_admin
