"""Which deployment a request's `model` names, as the caller may see it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from modelhost.errors import NotFound
from modelhost.store import deployments as store
from modelhost.store.tables import Deployment
from modelhost.store.users import Principal


@dataclass(frozen=True)
class Target:
    deploy_id: str
    full_name: str
    status: str
    desired_state: str
    fail_reason: str | None


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def _visible(dep: Deployment | None, who: Principal) -> bool:
    return (
        dep is not None
        and dep.deleted_at is None
        and (dep.owner_id == who.user_id or dep.public or who.is_admin)
    )


def resolve_model(s: Session, who: Principal, model: str) -> Target:
    """`deploy_id:<id>` or `<username>/<model_name>`; a bare name means the caller's own."""
    dep: Deployment | None
    if model.startswith("deploy_id:"):
        dep = s.get(Deployment, model.removeprefix("deploy_id:"))
    elif "/" in model:
        user, _, name = model.partition("/")
        dep = store.find_by_name(s, user, name)
    else:
        dep = store.find_by_name(s, who.username, model)
    if dep is None or not _visible(dep, who):
        raise model_not_found(model)
    return Target(
        deploy_id=dep.id,
        full_name=f"{store.owner_name(s, dep)}/{dep.model_name}",
        status=dep.status,
        desired_state=dep.desired_state,
        fail_reason=dep.fail_reason,
    )


def resolve_path(s: Session, who: Principal, username: str, model_name: str) -> Target:
    """The LoRAX-style per-deployment base URL `/deployments/<username>/<model_name>`."""
    return resolve_model(s, who, f"{username}/{model_name}")
