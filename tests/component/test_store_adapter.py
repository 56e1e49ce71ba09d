"""The reconciler's desired-state store over SQLite (orchestrator.store_adapter), and the status
the API shows while the reconciler is its only writer (store.deployments.shown_status)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from modelhost.domain.status import DesiredState
from modelhost.orchestrator.ports import StatusRecord
from modelhost.orchestrator.store_adapter import SqlDesiredState
from modelhost.security.secretbox import SecretBox
from modelhost.store import deployments as store
from modelhost.store.clock import utcnow
from modelhost.store.db import Database
from modelhost.store.tables import Deployment, User
from tests.conftest import make_settings

CONFIG = {"gpu": "CPU", "num_gpus": 1, "max_batch_size": 8, "engine": "simulator"}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(make_settings(tmp_path).sqlalchemy_url)
    database.migrate()
    yield database
    database.close()


def add_deployment(db: Database, deploy_id: str, **over: object) -> None:
    with db.session() as s:
        user = s.query(User).filter_by(username="alice").one_or_none()
        if user is None:
            user = User(username="alice", created_at=utcnow())
            s.add(user)
            s.flush()
        fields: dict[str, object] = {
            "id": deploy_id,
            "owner_id": user.id,
            "model_name": deploy_id,
            "desired_state": DesiredState.RUNNING.value,
            "config": CONFIG,
            "settings": {},
            "desired_replicas": 1,
            "created_at": utcnow(),
            "updated_at": utcnow(),
            **over,
        }
        s.add(Deployment(**fields))


def row(db: Database, deploy_id: str) -> Deployment:
    with db.session() as s:
        dep = s.get(Deployment, deploy_id)
        assert dep is not None
        return dep


def test_reads_intent_and_writes_statuses_with_events_and_a_notification(db: Database) -> None:
    notified: list[Sequence[str]] = []
    adapter = SqlDesiredState(
        db, {}, SecretBox(Fernet.generate_key()), "/adapters", on_status_change=notified.append
    )
    add_deployment(db, "d1")
    add_deployment(db, "d2", model_name="other", desired_state=DesiredState.STOPPED.value)
    assert row(db, "d1").status == "pending"  # a new row's status, before any pass

    got = {d.deploy_id: d for d in adapter.deployments()}
    assert got["d1"].owner == "alice" and got["d1"].max_batch_size == 8
    assert got["d1"].launch is not None and got["d1"].launch.served_model_name == "alice/d1"
    assert got["d2"].launch is None  # stopped: nothing to launch, no secret decrypted

    reason = "1 of 1 replicas pending: alice already holds 1 CPU slot, the limit per user"
    adapter.write_statuses([StatusRecord("d1", "pending", 0, 1, reason)])
    assert notified == [["d1"]]
    dep = row(db, "d1")
    assert (dep.status, dep.instances_pending, dep.pending_reason) == ("pending", 1, reason)
    adapter.write_statuses([StatusRecord("d1", "pending", 0, 1, reason)])
    assert notified == [["d1"]]  # nothing changed: no write, no notification

    adapter.write_statuses([StatusRecord("d1", "ready", 1, 0, None)])
    with db.session() as s:
        events = [(e.kind, e.message) for e in store.list_events(s, "d1")]
    assert events == [("pending", reason), ("status", "pending -> ready")]
    assert notified == [["d1"], ["d1"]]


def test_a_deleted_deployment_is_listed_until_its_status_says_deleted(db: Database) -> None:
    adapter = SqlDesiredState(db, {}, SecretBox(Fernet.generate_key()), "/adapters")
    add_deployment(
        db, "d1", desired_state=DesiredState.DELETED.value, deleted_at=utcnow(), status="standby"
    )
    (listed,) = adapter.deployments()
    assert listed.desired_state is DesiredState.DELETED
    adapter.write_statuses([StatusRecord("d1", "deleted", 0, 0, None)])
    assert adapter.deployments() == []


SHOWN = [
    # (desired state, stored status, fail_reason, desired replicas) -> shown
    ("running", "ready", None, 1, "ready"),
    ("running", "initializing", None, 1, "initializing"),
    ("running", "errored", "boom", 1, "errored"),
    # The owner's word shows before the reconciler's next pass has stored it.
    ("stopped", "ready", None, 1, "stopped"),
    ("deleted", "ready", None, 1, "deleted"),
    # Started again: a stored "stopped" is stale.
    ("running", "stopped", None, 1, "pending"),
    ("running", "stopped", None, 0, "standby"),
]


@pytest.mark.parametrize(("desired", "stored", "fail_reason", "replicas", "shown"), SHOWN)
def test_shown_status(
    desired: str, stored: str, fail_reason: str | None, replicas: int, shown: str
) -> None:
    dep = Deployment(
        desired_state=desired, status=stored, fail_reason=fail_reason, desired_replicas=replicas
    )
    assert store.shown_status(dep) == shown
