"""Which deployment (and adapter) a request's `model` names, as the caller may see it: read from
the in-memory directory (no database on the request path).

Who may use what is `domain.access.may_use`: a deployment or adapter is visible to its owner, to
everyone when public, and to admins; anything else answers exactly like one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelhost.directory.snapshot import AdapterEntry, DeploymentEntry, Snapshot
from modelhost.domain.access import may_use
from modelhost.domain.deployment_config import TokenPricing
from modelhost.domain.rate_limits import RateLimits
from modelhost.errors import NotFound
from modelhost.store.users import Principal


@dataclass(frozen=True, slots=True)
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
    # Who pays per token: the deployment's owner pays nothing for its own calls; others pay
    # `pricing` (None: no token charge).
    owner_id: int | None = None
    pricing: TokenPricing | None = None
    # Rate limits for callers other than the owner.
    rate_limits: RateLimits | None = None


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def adapter_not_found(adapter: str, base: Target) -> NotFound:
    return NotFound(
        f"adapter `{adapter}` is not registered on {base.full_name} or you cannot use it",
        param="adapter_id",
        code="adapter_not_found",
    )


def _visible(item: DeploymentEntry | AdapterEntry | None, who: Principal) -> bool:
    return item is not None and may_use(
        owner_id=item.owner_id, public=item.public, user_id=who.user_id, is_admin=who.is_admin
    )


def _target(dep: DeploymentEntry) -> Target:
    return Target(
        deploy_id=dep.id,
        full_name=dep.full_name,
        status=dep.status,
        desired_state=dep.desired_state,
        fail_reason=dep.fail_reason,
        pending_reason=dep.pending_reason,
        owner_id=dep.owner_id,
        pricing=dep.pricing,
        rate_limits=dep.rate_limits,
    )


def _adapter_target(snap: Snapshot, who: Principal, username: str, name: str) -> Target | None:
    adapter = snap.adapter_named(username, name)
    if adapter is None or not _visible(adapter, who):
        return None
    base = snap.deployment(adapter.base_deploy_id)
    if base is None:
        return None
    return Target(
        deploy_id=base.id,
        full_name=base.full_name,
        status=base.status,
        desired_state=base.desired_state,
        fail_reason=base.fail_reason,
        pending_reason=base.pending_reason,
        owner_id=base.owner_id,
        pricing=base.pricing,
        rate_limits=base.rate_limits,
        adapter_id=adapter.id,
        adapter_name=f"{username}/{name}",
    )


def resolve_model(snap: Snapshot, who: Principal, model: str) -> Target | None:
    """`deploy_id:<id>`, `<username>/<name>` (a deployment or an adapter), or a bare name of the
    caller's own; None when nothing the caller may see has that name."""
    if model.startswith("deploy_id:"):
        dep = snap.deployment(model.removeprefix("deploy_id:"))
        return _target(dep) if dep is not None and _visible(dep, who) else None
    user, _, name = model.rpartition("/")
    user = user or who.username
    dep = snap.deployment_named(user, name)
    if dep is not None and _visible(dep, who):
        return _target(dep)
    return _adapter_target(snap, who, user, name)


def resolve_path(snap: Snapshot, who: Principal, username: str, model_name: str) -> Target | None:
    """The LoRAX-style per-deployment base URL `/deployments/<username>/<model_name>`."""
    dep = snap.deployment_named(username, model_name)
    return _target(dep) if dep is not None and _visible(dep, who) else None


def resolve_adapter_on(snap: Snapshot, who: Principal, base: Target, adapter: str) -> Target | None:
    """An adapter named in a per-deployment request (`adapter_id` or `model`): the caller's own
    by bare name, else the base owner's, or `<username>/<name>`; it must be on that base."""
    owner = base.full_name.split("/", 1)[0]
    if "/" in adapter:
        username, name = adapter.split("/", 1)
        candidates = [(username, name)]
    else:
        candidates = [(who.username, adapter), (owner, adapter)]
    for username, name in candidates:
        target = _adapter_target(snap, who, username, name)
        if target is not None and target.deploy_id == base.deploy_id:
            return target
    return None


def visible_models(snap: Snapshot, who: Principal) -> list[DeploymentEntry]:
    """What `GET /v1/models` lists: the deployments the caller may use (its own, public ones,
    and for an admin every deployment)."""
    return [d for d in snap.deployments().values() if _visible(d, who)]
