"""Deployments, their events and their replica records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from modelhost.domain.access import may_manage
from modelhost.domain.autoscaling import AutoscalingSettings, validate_settings
from modelhost.domain.deployment_config import DeploymentConfig
from modelhost.domain.deployments import QuotaItem
from modelhost.domain.status import (
    DeploymentStatus,
    DesiredState,
    ReplicaCounts,
    StatusInputs,
    derive_status,
)
from modelhost.errors import NotFound
from modelhost.store import adapters as adapters_store
from modelhost.store.clock import utcnow
from modelhost.store.tables import Adapter, Deployment, Event, Replica, User
from modelhost.store.users import Principal


def not_found(deploy_id: str) -> NotFound:
    # Same body whether the id does not exist or belongs to someone else.
    return NotFound(f"deployment {deploy_id!r} not found", param="deploy_id")


def config_of(dep: Deployment) -> DeploymentConfig:
    """The deployment's config, typed: the one reader of the `config` JSON column."""
    return DeploymentConfig.from_json(dep.config)


def settings_of(dep: Deployment) -> AutoscalingSettings:
    """The deployment's autoscaling settings, typed: the one reader of the `settings` JSON
    column (stored validated, so this only fills in the defaults of fields added since)."""
    return validate_settings(dep.settings, None)


def get_owned(s: Session, who: Principal, deploy_id: str) -> Deployment:
    """A deployment the caller may manage; any other answers as unknown."""
    dep = s.get(Deployment, deploy_id)
    if dep is None or dep.deleted_at is not None:
        raise not_found(deploy_id)
    if not may_manage(owner_id=dep.owner_id, user_id=who.user_id, is_admin=who.is_admin):
        raise not_found(deploy_id)
    return dep


def owner_name(s: Session, dep: Deployment) -> str:
    name = s.scalar(select(User.username).where(User.id == dep.owner_id))
    return name or "?"


def find_by_name(s: Session, username: str, model_name: str) -> Deployment | None:
    return s.scalar(
        select(Deployment)
        .join(User, User.id == Deployment.owner_id)
        .where(
            User.username == username,
            User.deleted_at.is_(None),
            Deployment.model_name == model_name,
            Deployment.deleted_at.is_(None),
        )
    )


# Statuses only the owner's stop or delete leads to.
_OWNER_SET = frozenset({DeploymentStatus.STOPPED.value, DeploymentStatus.DELETED.value})


def shown_status(dep: Deployment) -> str:
    """The status the API shows. The reconciler is the only writer of `status`, and the owner's
    word must not wait for its next pass: a stop or a delete decides the status by itself
    (`derive_status` looks at no replica then), and a start makes a stored `stopped` stale, so
    those show what `derive_status` says with no replica known yet. Otherwise the stored status;
    a new deployment's is the column's initial value, `pending`."""
    desired = DesiredState(dep.desired_state)
    stale = desired is not DesiredState.RUNNING or dep.status in _OWNER_SET
    if not stale:
        return dep.status
    inputs = StatusInputs(desired, dep.desired_replicas, ReplicaCounts(), dep.fail_reason)
    return derive_status(inputs).value


def list_for(
    s: Session, who: Principal, statuses: Sequence[str] | None, all_users: bool
) -> list[Deployment]:
    q = select(Deployment).order_by(Deployment.created_at)
    if not (all_users and who.is_admin):
        q = q.where(Deployment.owner_id == who.user_id)
    if not statuses or DeploymentStatus.DELETED.value not in statuses:
        q = q.where(Deployment.deleted_at.is_(None))
    found = list(s.scalars(q))
    if statuses:
        # By the status shown, not the stored one (see shown_status): a few rows per owner.
        found = [d for d in found if shown_status(d) in statuses]
    return found


def list_by_owner(s: Session, owner_id: int) -> list[Deployment]:
    q = select(Deployment).where(Deployment.owner_id == owner_id, Deployment.deleted_at.is_(None))
    return list(s.scalars(q))


def quota_items(s: Session, owner_id: int, exclude: str | None = None) -> list[QuotaItem]:
    q = select(Deployment).where(
        Deployment.owner_id == owner_id,
        Deployment.desired_state == DesiredState.RUNNING.value,
        Deployment.deleted_at.is_(None),
    )
    return [
        config_of(d).quota_item(settings_of(d).max_instances)
        for d in s.scalars(q)
        if d.id != exclude
    ]


def mark_deleted(s: Session, dep: Deployment, message: str) -> list[Adapter]:
    """Record the owner's (or an admin's) delete: the reconciler drains and stops the replicas
    and writes the status. The adapters registered on it go with it; they are returned, so the
    caller can remove their files once this commits."""
    now = utcnow()
    dep.desired_state = DesiredState.DELETED.value
    dep.deleted_at = now
    dep.updated_at = now
    add_event(s, dep.id, "deleted", message)
    adapters = adapters_store.on_base(s, dep.id)
    for adapter in adapters:
        adapter.deleted_at = now
    return adapters


def live_deployments(s: Session) -> list[Deployment]:
    """Deployments the reconciler must look at: those not deleted, plus deleted ones that
    still have replicas to stop."""
    with_replicas = select(Replica.deploy_id).where(Replica.exited_at.is_(None))
    q = (
        select(Deployment)
        .where(or_(Deployment.deleted_at.is_(None), Deployment.id.in_(with_replicas)))
        .order_by(Deployment.created_at)
    )
    return list(s.scalars(q))


def reconciled_deployments(s: Session) -> list[Deployment]:
    """What the reconciler looks at: `live_deployments`, plus deleted ones whose status does
    not say deleted yet (the reconciler writes it, also for an owner's account deleted)."""
    with_replicas = select(Replica.deploy_id).where(Replica.exited_at.is_(None))
    q = (
        select(Deployment)
        .where(
            or_(
                Deployment.deleted_at.is_(None),
                Deployment.id.in_(with_replicas),
                Deployment.status != DeploymentStatus.DELETED.value,
            )
        )
        .order_by(Deployment.created_at)
    )
    return list(s.scalars(q))


def deployments_with_replicas(s: Session) -> set[str]:
    """Deployments that ever launched a replica."""
    return set(s.scalars(select(Replica.deploy_id).distinct()))


def add_event(
    s: Session, deploy_id: str, kind: str, message: str, data: dict[str, Any] | None = None
) -> None:
    s.add(Event(deploy_id=deploy_id, ts=utcnow(), kind=kind, message=message, data=data or {}))


def list_events(s: Session, deploy_id: str, after_id: int = 0, limit: int = 500) -> list[Event]:
    q = (
        select(Event)
        .where(Event.deploy_id == deploy_id, Event.id > after_id)
        .order_by(Event.id.desc())
        .limit(limit)
    )
    return list(reversed(list(s.scalars(q))))


def replicas_of(s: Session, deploy_id: str) -> list[Replica]:
    return list(
        s.scalars(
            select(Replica).where(Replica.deploy_id == deploy_id).order_by(Replica.started_at)
        )
    )


def live_replica_rows(s: Session) -> list[Replica]:
    return list(s.scalars(select(Replica).where(Replica.exited_at.is_(None))))
