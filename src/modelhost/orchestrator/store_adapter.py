"""The reconciler's `DesiredStateStore` over the SQLAlchemy database: the one place where the
orchestrator reads and writes deployment and replica rows. Every method is one transaction and
blocks; the reconciler calls them on its store thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.orm import Session

from modelhost.config.catalog import CatalogModel
from modelhost.domain.replicas import ReplicaState
from modelhost.domain.status import DesiredState
from modelhost.orchestrator.backends.base import AdoptResult, ReplicaRecord
from modelhost.orchestrator.launch import launch_spec, preloaded_adapter_ids
from modelhost.orchestrator.ports import StatusRecord, StoredDeployment
from modelhost.orchestrator.replica_rows import record_start, sync_rows
from modelhost.orchestrator.types import ReplicaObservation, StartReplica
from modelhost.security.secretbox import SecretBox
from modelhost.store import deployments as store
from modelhost.store.clock import utcnow
from modelhost.store.db import Database
from modelhost.store.tables import Deployment, User


def _no_one(deploy_ids: Sequence[str]) -> None:
    return None


@dataclass
class SqlDesiredState:
    db: Database
    catalog: dict[str, CatalogModel]
    secrets: SecretBox
    # Where every replica finds the adapters registered on its deployment.
    adapter_dir: str
    # Called after a commit that changed deployments' status, instances or pending reason, with
    # their ids (on the store thread): the hook for in-memory views of deployments to refresh.
    on_status_change: Callable[[Sequence[str]], None] = field(default=_no_one)
    # For `engine: auto`: the server's real NVIDIA GPU types (vLLM runs there when installed)
    # and the interpreter with vLLM (the `vllm_python` setting; None: not installed).
    real_gpu_types: frozenset[str] = frozenset()
    vllm_python: str | None = None

    # The state each replica's row was last synced to by this adapter: a pass reads and writes
    # only the rows whose replica changed state (1,000 replicas: one SELECT each was 90 ms of
    # CPU per pass; bench/reconcile_scale.py). Rows are the reconciler's alone to write.
    _synced: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def record_replicas(self, observed: Sequence[ReplicaObservation]) -> None:
        changed = [o for o in observed if self._synced.get(o.replica_id) != o.state.value]
        if changed:
            with self.db.session() as s:
                sync_rows(s, changed)
        self._synced = {o.replica_id: o.state.value for o in observed}

    def deployments(self) -> list[StoredDeployment]:
        with self.db.session() as s:
            started = store.deployments_with_replicas(s)
            return [self._stored(s, d, d.id in started) for d in store.reconciled_deployments(s)]

    def _stored(self, s: Session, dep: Deployment, ever_started: bool) -> StoredDeployment:
        owner_row = s.get(User, dep.owner_id)
        owner = owner_row.username if owner_row is not None else "?"
        config = store.config_of(dep)
        stored = StoredDeployment(
            deploy_id=dep.id,
            owner=owner,
            owner_is_admin=owner_row is not None and owner_row.is_admin,
            desired_state=DesiredState(dep.desired_state),
            desired_replicas=dep.desired_replicas,
            generation=dep.generation,
            fail_reason=dep.fail_reason,
            ever_started=ever_started,
            max_batch_size=config.max_batch_size,
            max_active_adapters=config.max_active_adapters,
        )
        if not stored.should_run:
            return stored
        launch = launch_spec(
            dep,
            owner,
            self.catalog,
            self.secrets,
            self.adapter_dir,
            preloaded_adapter_ids(s, dep),
            real_gpu_types=self.real_gpu_types,
            vllm_python=self.vllm_python,
        )
        return replace(stored, launch=launch, engine=launch.engine)

    def record_start(self, action: StartReplica, record: ReplicaRecord | None) -> None:
        with self.db.session() as s:
            record_start(s, action, record)

    def add_event(self, deploy_id: str, kind: str, message: str) -> None:
        with self.db.session() as s:
            store.add_event(s, deploy_id, kind, message)

    def mark_errored(self, deploy_id: str, reason: str) -> None:
        with self.db.session() as s:
            dep = s.get(Deployment, deploy_id)
            if dep is not None:
                dep.fail_reason = reason
                store.add_event(s, deploy_id, "errored", reason)

    def write_statuses(self, records: Sequence[StatusRecord]) -> None:
        changed: list[str] = []
        with self.db.session() as s:
            for r in records:
                dep = s.get(Deployment, r.deploy_id)
                if dep is None:
                    continue
                touched = False
                if r.status != dep.status:
                    store.add_event(s, dep.id, "status", f"{dep.status} -> {r.status}")
                    dep.status = r.status
                    dep.updated_at = utcnow()
                    touched = True
                counts = (r.instances_running, r.instances_pending, r.pending_reason)
                if counts != (dep.instances_running, dep.instances_pending, dep.pending_reason):
                    if r.pending_reason and r.pending_reason != dep.pending_reason:
                        store.add_event(s, dep.id, "pending", r.pending_reason)
                    dep.instances_running, dep.instances_pending = counts[:2]
                    dep.pending_reason = r.pending_reason
                    touched = True
                if touched:
                    changed.append(dep.id)
        if changed:
            self.on_status_change(changed)

    def replica_records(self) -> list[ReplicaRecord]:
        records: list[ReplicaRecord] = []
        with self.db.session() as s:
            for r in store.live_replica_rows(s):
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
        return records

    def record_adoption(self, result: AdoptResult) -> None:
        cleaned = dict(result.cleaned)
        with self.db.session() as s:
            for r in store.live_replica_rows(s):
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
