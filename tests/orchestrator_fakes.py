"""Fakes of the reconciler's other seams: a clock, a routing sink, and a desired-state store in
memory that keeps rows and events by the SQL adapter's rules (with tests/fake_backend.py for the
backend). Unit tests script them; e2e tests drive the real reconciler over the local backend
with them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from modelhost.domain.replicas import LaunchSpec, ReplicaState
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.domain.status import DesiredState
from modelhost.orchestrator.backends.base import AdoptResult, ReplicaRecord
from modelhost.orchestrator.ports import StatusRecord, StoredDeployment
from modelhost.orchestrator.types import ReplicaObservation, StartReplica
from tests.fake_backend import FakeBackend

GPU = "A100-80GB"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)  # let other tasks run; no real time passes

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeRouting:
    """Records every published table, with how many calls the fake backend (if given) had
    seen by then."""

    def __init__(self, backend: FakeBackend | None = None) -> None:
        self.backend = backend
        self.tables: list[tuple[int, dict[str, list[str]]]] = []
        # Outstanding requests per replica, answered in turn (the last one repeats).
        self.outstanding: dict[str, list[int]] = {}
        self.endpoints: dict[str, list[ReplicaEndpoint]] = {}

    def publish(self, table: Mapping[str, Sequence[ReplicaEndpoint]]) -> None:
        self.endpoints = {d: list(eps) for d, eps in table.items()}
        routed = {d: [e.replica_id for e in eps] for d, eps in table.items() if eps}
        self.tables.append((len(self.backend.calls) if self.backend else 0, routed))

    def outstanding_on(self, deploy_id: str, replica_id: str) -> int:
        answers = self.outstanding.get(replica_id, [0])
        return answers.pop(0) if len(answers) > 1 else answers[0]

    @property
    def routed(self) -> dict[str, list[str]]:
        return self.tables[-1][1] if self.tables else {}


@dataclass
class Row:
    """A deployment row: the owner's intent (written by the test, as the API would) and what
    the reconciler writes back."""

    deploy_id: str
    desired_replicas: int = 1
    desired_state: DesiredState = DesiredState.RUNNING
    generation: int = 1
    fail_reason: str | None = None
    deleted: bool = False
    owner: str = "alice"
    gpu: str = GPU
    num_gpus: int = 1
    engine: str = "simulator"
    engine_args: tuple[str, ...] = ()
    status: str = "pending"
    instances_running: int = 0
    instances_pending: int = 0
    pending_reason: str | None = None


@dataclass
class ReplicaRow:
    deploy_id: str
    generation: int
    state: str
    record: ReplicaRecord | None
    exited: bool = False
    fail_reason: str | None = None


@dataclass
class MemoryStore:
    """The DesiredStateStore in memory, with the SQL adapter's rules for rows and events."""

    deps: dict[str, Row] = field(default_factory=dict)
    replicas: dict[str, ReplicaRow] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    fail_status_writes: bool = False

    def add(self, row: Row) -> Row:
        self.deps[row.deploy_id] = row
        return row

    def _called(self) -> None:
        self.threads.add(threading.get_ident())

    def record_replicas(self, observed: Sequence[ReplicaObservation]) -> None:
        self._called()
        for o in observed:
            row = self.replicas.get(o.replica_id)
            if row is None or row.state == o.state.value:
                continue
            row.state = o.state.value
            if o.state == ReplicaState.READY:
                self.events.append((o.deploy_id, "replica_ready", o.replica_id))
            elif o.state.terminal:
                row.exited, row.fail_reason = True, o.fail_reason
                kind = "replica_failed" if o.state == ReplicaState.FAILED else "replica_stopped"
                self.events.append((o.deploy_id, kind, o.replica_id))

    def deployments(self) -> list[StoredDeployment]:
        self._called()
        live_rows = {r.deploy_id for r in self.replicas.values() if not r.exited}
        out = []
        for d in self.deps.values():
            if d.deleted and d.deploy_id not in live_rows and d.status == "deleted":
                continue
            stored = StoredDeployment(
                deploy_id=d.deploy_id,
                owner=d.owner,
                owner_is_admin=False,
                desired_state=d.desired_state,
                desired_replicas=d.desired_replicas,
                generation=d.generation,
                fail_reason=d.fail_reason,
                ever_started=any(r.deploy_id == d.deploy_id for r in self.replicas.values()),
                max_batch_size=8,
                max_active_adapters=4,
            )
            if stored.should_run:
                launch = LaunchSpec(
                    engine=d.engine,
                    served_model_name=f"{d.owner}/{d.deploy_id}",
                    max_batch_size=8,
                    engine_args=d.engine_args,
                    gpu_type=d.gpu,
                    num_gpus=d.num_gpus,
                )
                stored = replace(stored, launch=launch)
            out.append(stored)
        return out

    def record_start(self, action: StartReplica, record: ReplicaRecord | None) -> None:
        self._called()
        self.replicas[action.replica_id] = ReplicaRow(
            action.deploy_id, action.generation, ReplicaState.STARTING.value, record
        )
        self.events.append((action.deploy_id, "replica_starting", action.replica_id))

    def add_event(self, deploy_id: str, kind: str, message: str) -> None:
        self._called()
        self.events.append((deploy_id, kind, message))

    def mark_errored(self, deploy_id: str, reason: str) -> None:
        self._called()
        self.deps[deploy_id].fail_reason = reason
        self.events.append((deploy_id, "errored", reason))

    def write_statuses(self, records: Sequence[StatusRecord]) -> None:
        self._called()
        if self.fail_status_writes:
            raise RuntimeError("the database is gone")
        for r in records:
            d = self.deps[r.deploy_id]
            if r.status != d.status:
                self.events.append((d.deploy_id, "status", f"{d.status} -> {r.status}"))
                d.status = r.status
            if r.pending_reason and r.pending_reason != d.pending_reason:
                self.events.append((d.deploy_id, "pending", r.pending_reason))
            d.instances_running, d.instances_pending = r.instances_running, r.instances_pending
            d.pending_reason = r.pending_reason

    def replica_records(self) -> list[ReplicaRecord]:
        self._called()
        return [r.record for r in self.replicas.values() if not r.exited and r.record]

    def record_adoption(self, result: AdoptResult) -> None:
        self._called()
        for rid, why in result.cleaned:
            row = self.replicas[rid]
            row.exited, row.state, row.fail_reason = True, "stopped", why
            self.events.append((row.deploy_id, "replica_cleaned", rid))
        for rid in result.adopted:
            self.events.append((self.replicas[rid].deploy_id, "replica_adopted", rid))

    # ---- reading back ----------------------------------------------------------------------
    def statuses(self, deploy_id: str) -> list[str]:
        """Every status the deployment went through: its initial one, then each one written."""
        changes = [m for d, k, m in self.events if d == deploy_id and k == "status"]
        return (
            [self.deps[deploy_id].status]
            if not changes
            else [
                changes[0].split(" -> ")[0],
                *(m.split(" -> ")[1] for m in changes),
            ]
        )

    def kinds(self, deploy_id: str) -> list[str]:
        return [k for d, k, _ in self.events if d == deploy_id]
