"""Keep the `replicas` table and the event log in step with what the backend observes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.backends.base import ReplicaRecord
from modelhost.orchestrator.types import ReplicaObservation, StartReplica
from modelhost.store import deployments as store
from modelhost.store.clock import utcnow
from modelhost.store.tables import Replica


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def record_start(s: Session, action: StartReplica, record: ReplicaRecord | None) -> None:
    row = Replica(
        id=action.replica_id,
        deploy_id=action.deploy_id,
        generation=action.generation,
        state=ReplicaState.STARTING.value,
        devices=list(action.devices),
        engine=action.launch.engine,
        # The backend's own start time: the GPU meter bills from it, and after a restart the
        # adopted replica is billed from this row, so both must agree.
        started_at=_dt(record.started_at) if record is not None else utcnow(),
    )
    if record is not None:
        row.pid, row.port, row.log_path = record.pid, record.port, record.log_path
        row.proc_start_time = str(record.proc_start_ticks)
    s.add(row)
    devices = ", ".join(action.devices)
    store.add_event(
        s,
        action.deploy_id,
        "replica_starting",
        f"replica {action.replica_id} starting on {devices} "
        f"({action.launch.engine} engine, generation {action.generation})",
    )


def sync_rows(s: Session, observed: Sequence[ReplicaObservation]) -> None:
    """Persist state transitions and record one event per transition."""
    for o in observed:
        row = s.get(Replica, o.replica_id)
        if row is None or row.state == o.state.value:
            continue
        row.state = o.state.value
        if o.state == ReplicaState.READY:
            row.ready_at = _dt(o.ready_at) or utcnow()
            # A Ray replica's port and pid are known only once it was placed (ray_backend).
            row.port, row.pid = o.port if o.port is not None else row.port, o.pid or row.pid
            # Where other server processes' gateways reach it (serve/leadership.py RoutingFeed).
            row.host = o.host
            took = f" in {o.ready_at - o.started_at:.1f}s" if o.ready_at else ""
            store.add_event(s, o.deploy_id, "replica_ready", f"replica {o.replica_id} ready{took}")
        elif o.state.terminal:
            row.exited_at = _dt(o.exited_at) or utcnow()
            row.exit_code, row.fail_reason = o.exit_code, o.fail_reason
            if o.state == ReplicaState.FAILED:
                store.add_event(
                    s,
                    o.deploy_id,
                    "replica_failed",
                    f"replica {o.replica_id} failed: {o.fail_reason or 'exited'}",
                    {"exit_code": o.exit_code},
                )
            else:
                store.add_event(
                    s, o.deploy_id, "replica_stopped", f"replica {o.replica_id} stopped"
                )
