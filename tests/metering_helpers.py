"""What the GPU meter's tests (unit and component) meter: a store with one user's deployment,
and the replicas the meter observes."""

from __future__ import annotations

from datetime import UTC, datetime

from modelhost.domain.deployment_config import DeploymentConfig
from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.store import users
from modelhost.store.db import Database
from modelhost.store.tables import Deployment


def metering_db(url: str, *, num_gpus: int, engine: str) -> tuple[Database, int]:
    """A migrated store at `url` with user alice (GPU limit 4) and her running deployment `d1`
    on `num_gpus` A100-80GB; returns the store and alice's id."""
    db = Database(url)
    db.migrate()
    now = datetime.now(UTC)
    try:
        with db.session() as s:
            user = users.create_user(s, "alice", 4)
            s.flush()
            config = DeploymentConfig(
                gpu="A100-80GB", num_gpus=num_gpus, max_batch_size=4, engine=engine
            )
            s.add(
                Deployment(
                    id="d1",
                    owner_id=user.id,
                    model_name="m",
                    desired_state="running",
                    config=config.to_json(),
                    settings={},
                    created_at=now,
                    updated_at=now,
                )
            )
            return db, user.id
    except BaseException:
        db.close()
        raise


def obs(
    rid: str,
    started_at: float,
    state: ReplicaState = ReplicaState.READY,
    exited_at: float | None = None,
    devices: tuple[str, ...] = ("A100-80GB:0", "A100-80GB:1"),
    deploy_id: str = "d1",
    busy: tuple[float, float] | None = None,
) -> ReplicaObservation:
    """One replica as the meter (or the metric sampler) observes it (generation 1, no port or
    pid); `busy`: the engine's (busy_s, uptime_s)."""
    return ReplicaObservation(
        replica_id=rid,
        deploy_id=deploy_id,
        generation=1,
        state=state,
        port=None,
        pid=None,
        devices=devices,
        started_at=started_at,
        exited_at=exited_at,
        busy_s=busy[0] if busy else None,
        uptime_s=busy[1] if busy else None,
    )
