"""LoRA adapters in the store."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhost.errors import NotFound
from modelhost.store.tables import Adapter, Deployment, User
from modelhost.store.users import Principal


def not_found(name: str) -> NotFound:
    return NotFound(f"adapter {name!r} not found", param="adapter", code="adapter_not_found")


def find(s: Session, username: str, name: str) -> Adapter | None:
    return s.scalar(
        select(Adapter)
        .join(User, User.id == Adapter.owner_id)
        .where(
            User.username == username,
            User.deleted_at.is_(None),
            Adapter.name == name,
            Adapter.deleted_at.is_(None),
        )
    )


def get_owned(s: Session, who: Principal, name: str) -> Adapter:
    adapter = find(s, who.username, name)
    if adapter is None:
        raise not_found(name)
    return adapter


def name_taken(s: Session, owner_id: int, name: str) -> bool:
    """Adapters and deployments share the `<username>/<name>` namespace of `model`."""
    adapter = s.scalar(
        select(Adapter.id).where(
            Adapter.owner_id == owner_id, Adapter.name == name, Adapter.deleted_at.is_(None)
        )
    )
    dep = s.scalar(
        select(Deployment.id).where(
            Deployment.owner_id == owner_id,
            Deployment.model_name == name,
            Deployment.deleted_at.is_(None),
        )
    )
    return adapter is not None or dep is not None


def list_owned(s: Session, owner_id: int) -> list[Adapter]:
    q = (
        select(Adapter)
        .where(Adapter.owner_id == owner_id, Adapter.deleted_at.is_(None))
        .order_by(Adapter.created_at)
    )
    return list(s.scalars(q))


def on_base(s: Session, deploy_id: str) -> list[Adapter]:
    q = select(Adapter).where(Adapter.base_deploy_id == deploy_id, Adapter.deleted_at.is_(None))
    return list(s.scalars(q))
