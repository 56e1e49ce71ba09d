"""Which deployment (and adapter) a request's `model` names, as the caller may see it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from modelhost.errors import NotFound
from modelhost.store import adapters as adapters_store
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
    # A LoRA adapter on that deployment: the engine's id for it and its user-facing name.
    adapter_id: str | None = None
    adapter_name: str | None = None
    # Why the orchestrator could not place replicas (the deploy object's
    # autoscaling.pending_reason): with none serving or starting, requests are refused at once.
    pending_reason: str | None = None


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


def _target(s: Session, dep: Deployment) -> Target:
    return Target(
        deploy_id=dep.id,
        full_name=f"{store.owner_name(s, dep)}/{dep.model_name}",
        status=dep.status,
        desired_state=dep.desired_state,
        fail_reason=dep.fail_reason,
        pending_reason=dep.pending_reason,
    )


def _adapter_target(s: Session, who: Principal, username: str, name: str) -> Target | None:
    adapter = adapters_store.find(s, username, name)
    if adapter is None or not adapters_store.visible(adapter, who):
        return None
    base = s.get(Deployment, adapter.base_deploy_id)
    if base is None or base.deleted_at is not None:
        return None
    return replace(_target(s, base), adapter_id=adapter.id, adapter_name=f"{username}/{name}")


def resolve_model(s: Session, who: Principal, model: str) -> Target:
    """`deploy_id:<id>`, `<username>/<name>` (a deployment or an adapter), or a bare name of the
    caller's own."""
    if model.startswith("deploy_id:"):
        dep = s.get(Deployment, model.removeprefix("deploy_id:"))
        if dep is None or not _visible(dep, who):
            raise model_not_found(model)
        return _target(s, dep)
    user, _, name = model.rpartition("/")
    user = user or who.username
    dep = store.find_by_name(s, user, name)
    if dep is not None and _visible(dep, who):
        return _target(s, dep)
    target = _adapter_target(s, who, user, name)
    if target is None:
        raise model_not_found(model)
    return target


def resolve_path(s: Session, who: Principal, username: str, model_name: str) -> Target:
    """The LoRAX-style per-deployment base URL `/deployments/<username>/<model_name>`."""
    dep = store.find_by_name(s, username, model_name)
    if dep is None or not _visible(dep, who):
        raise model_not_found(f"{username}/{model_name}")
    return _target(s, dep)


def resolve_adapter_on(s: Session, who: Principal, base: Target, adapter: str) -> Target:
    """An adapter named in a per-deployment request (`adapter_id` or `model`): the caller's own
    by bare name, else the base owner's, or `<username>/<name>`; it must be on that base."""
    owner = base.full_name.split("/", 1)[0]
    if "/" in adapter:
        candidates = [tuple(adapter.split("/", 1))]
    else:
        candidates = [(who.username, adapter), (owner, adapter)]
    for username, name in candidates:
        target = _adapter_target(s, who, username, name)
        if target is not None and target.deploy_id == base.deploy_id:
            return target
    raise NotFound(
        f"adapter `{adapter}` is not registered on {base.full_name} or you cannot use it",
        param="adapter_id",
        code="adapter_not_found",
    )
