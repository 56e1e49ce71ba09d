"""Users (admin), the caller's account, and API tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelhost.api.deps import AdminDep, PrincipalDep, ServicesDep
from modelhost.api.schemas import CreateToken, CreateUser
from modelhost.api.views import token_object, user_object
from modelhost.domain.deployments import USERNAME_RE, gpus_reserved
from modelhost.domain.status import DesiredState
from modelhost.errors import ValidationFailed
from modelhost.store import deployments as deps_store
from modelhost.store import users as users_store
from modelhost.store.clock import utcnow
from modelhost.web.openapi import errors

router = APIRouter()
ADMIN = {403: "the caller is not an admin (`admin_only`)"}


@router.post("/v1/users", status_code=201, responses=errors(403, 409, 422, notes=ADMIN))
def create_user(body: CreateUser, admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    if not USERNAME_RE.match(body.username):
        raise ValidationFailed(
            "username must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a "
            "letter or digit",
            param="username",
        )
    limit = body.gpu_limit if body.gpu_limit is not None else services.settings.default_gpu_limit
    with services.db.session() as s:
        user = users_store.create_user(s, body.username, limit, is_admin=body.is_admin)
        _, token = users_store.issue_token(s, user, "default")
        return {**user_object(user), "token": token}


@router.get("/v1/users", responses=errors(403, notes=ADMIN))
def list_users(admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        return {"users": [user_object(u) for u in users_store.list_users(s)]}


@router.delete("/v1/users/{username}", responses=errors(403, 404, 422, notes=ADMIN))
def delete_user(username: str, admin: AdminDep, services: ServicesDep) -> dict[str, Any]:
    if username == admin.username:
        raise ValidationFailed("you cannot delete your own account", param="username")
    with services.db.session() as s:
        user = users_store.get_user(s, username)
        now = utcnow()
        for dep in deps_store.list_by_owner(s, user.id):
            dep.desired_state = DesiredState.DELETED.value
            dep.deleted_at = now
            dep.updated_at = now
            deps_store.add_event(s, dep.id, "deleted", "owner account deleted")
        users_store.delete_user(s, user)
    services.notify()
    return {"username": username}


@router.get("/v1/me")
def me(who: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        reserved = gpus_reserved(deps_store.quota_items(s, who.user_id))
    return {
        "username": who.username,
        "is_admin": who.is_admin,
        "gpu_limit": who.gpu_limit,
        "gpus_reserved": reserved,
    }


@router.get("/v1/api-tokens")
def list_tokens(who: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    with services.db.session() as s:
        return [token_object(t) for t in users_store.list_tokens(s, who.user_id)]


@router.post("/v1/api-tokens", status_code=201, responses=errors(409, 422))
def create_token(body: CreateToken, who: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        user = users_store.get_user(s, who.username)
        row, plaintext = users_store.issue_token(s, user, body.name)
        return token_object(row, plaintext)


@router.delete("/v1/api-tokens/{token_id}", responses=errors(404))
def revoke_token(token_id: str, who: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        users_store.revoke_token(s, who.user_id, token_id)
    return {"token_id": token_id}
