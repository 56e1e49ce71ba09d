"""The reconciler's seams, other than the backend: the gateway's routing table, the desired-state
store and the clock. Each is a protocol, so that unit tests drive the reconciler with fakes in
memory and the orchestrator never imports the gateway or the database.

What crosses them is plain frozen data: `StoredDeployment` (the owner's intent, read from the
store) in, `StatusRecord` (what the reconciler derived) out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelhost.domain.replicas import LaunchSpec
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.domain.status import DesiredState
from modelhost.orchestrator.backends.base import AdoptResult, ReplicaRecord
from modelhost.orchestrator.types import ReplicaObservation, StartReplica


class RoutingSink(Protocol):
    """The gateway side, as the orchestrator sees it (the two never import each other). Called
    on the event loop, where the gateway lives."""

    def publish(self, table: Mapping[str, Sequence[ReplicaEndpoint]]) -> None: ...

    def outstanding_on(self, deploy_id: str, replica_id: str) -> int: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds: the clock replica observations are stamped with."""
        ...

    def monotonic(self) -> float:
        """For deadlines (a drain's bound)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class StoredDeployment:
    """One deployment as the reconciler reads it: what its owner asked for, and what it takes to
    run it. Deleted deployments are listed while they have replicas or their status does not
    say deleted yet."""

    deploy_id: str
    owner: str
    owner_is_admin: bool
    desired_state: DesiredState
    desired_replicas: int
    generation: int
    fail_reason: str | None
    # Any replica was ever launched (a deployment waiting out a restart backoff is not new).
    ever_started: bool
    # Per-replica limits the gateway routes by.
    max_batch_size: int
    max_active_adapters: int
    # The runtime its replicas run (the resolved `engine`).
    engine: str = "builtin"
    # Built only for deployments that should run (decrypting secrets for the others is waste).
    launch: LaunchSpec | None = None

    @property
    def should_run(self) -> bool:
        """Running, and not errored: an errored deployment starts nothing until /start or a
        config change clears its fail_reason."""
        return self.desired_state is DesiredState.RUNNING and self.fail_reason is None


@dataclass(frozen=True)
class StatusRecord:
    """What the reconciler derived for a deployment in one pass."""

    deploy_id: str
    status: str
    instances_running: int
    instances_pending: int
    pending_reason: str | None


class DesiredStateStore(Protocol):
    """The reconciler's view of the database. Every method is blocking and the reconciler calls
    them in its store thread, never on the event loop."""

    def record_replicas(self, observed: Sequence[ReplicaObservation]) -> None:
        """Persist replica state transitions, one event per transition."""
        ...

    def deployments(self) -> list[StoredDeployment]:
        """The deployments to reconcile, oldest first."""
        ...

    def record_start(self, action: StartReplica, record: ReplicaRecord | None) -> None:
        """A replica row for a replica just started (with what adoption needs), and an event."""
        ...

    def add_event(self, deploy_id: str, kind: str, message: str) -> None: ...

    def mark_errored(self, deploy_id: str, reason: str) -> None:
        """Set the deployment's fail_reason (it then starts nothing more), with an event."""
        ...

    def write_statuses(self, records: Sequence[StatusRecord]) -> None:
        """Store status, instances and pending reason where they changed, with an event per
        status change and per new pending reason."""
        ...

    def replica_records(self) -> list[ReplicaRecord]:
        """What a previous server process left running, for adoption. Rows too incomplete to
        adopt are closed as stopped here."""
        ...

    def record_adoption(self, result: AdoptResult) -> None:
        """Close the rows of replicas that were not adopted; an event for each replica."""
        ...
