"""Users (admin), the caller's account, and API tokens."""

from __future__ import annotations

from fastapi import APIRouter

from modelhost.adapters import files
from modelhost.api.deps import AdminDep, PrincipalDep, ServicesDep
from modelhost.api.schemas import (
    CreateToken,
    CreateUser,
    MePublic,
    TokenCreatedPublic,
    TokenPublic,
    TokenRevokedPublic,
    UpdateUser,
    UserCreatedPublic,
    UserDeletedPublic,
    UserPublic,
    UsersPublic,
)
from modelhost.api.views import created_token_object, created_user_object, token_object, user_object
from modelhost.domain.deployments import USERNAME_RE, gpus_reserved
from modelhost.errors import ValidationFailed
from modelhost.store import adapters as adapters_store
from modelhost.store import deployments as deps_store
from modelhost.store import users as users_store
from modelhost.store.clock import utcnow
from modelhost.web.openapi import errors

router = APIRouter()
ADMIN = {403: "the caller is not an admin (`admin_only`)"}


@router.post("/v1/users", status_code=201, responses=errors(403, 409, 422, notes=ADMIN))
def create_user(body: CreateUser, admin: AdminDep, services: ServicesDep) -> UserCreatedPublic:
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
        return created_user_object(user, token)


@router.get("/v1/users", responses=errors(403, notes=ADMIN))
def list_users(admin: AdminDep, services: ServicesDep) -> UsersPublic:
    with services.db.session() as s:
        return UsersPublic(users=[user_object(u) for u in users_store.list_users(s)])


@router.put("/v1/users/{username}", responses=errors(403, 404, 422, notes=ADMIN))
def update_user(
    username: str, body: UpdateUser, admin: AdminDep, services: ServicesDep
) -> UserPublic:
    """An admin's changes to a user: the GPU quota and the user's rate limits (requests and
    tokens per minute over all their requests; `null` removes them). Applied live."""
    with services.db.session() as s:
        user = users_store.get_user(s, username)
        if body.gpu_limit is not None:
            user.gpu_limit = body.gpu_limit
        if "rate_limits" in body.model_fields_set:
            limits = body.rate_limits.to_limits() if body.rate_limits is not None else None
            user.rate_limits = limits.to_json() if limits is not None else None
        s.flush()
        return user_object(user)


@router.delete("/v1/users/{username}", responses=errors(403, 404, 422, notes=ADMIN))
def delete_user(username: str, admin: AdminDep, services: ServicesDep) -> UserDeletedPublic:
    """The account, its tokens, its deployments (the reconciler stops their replicas and
    writes their status) and the adapters on them, and its own adapters."""
    if username == admin.username:
        raise ValidationFailed("you cannot delete your own account", param="username")
    with services.db.session() as s:
        user = users_store.get_user(s, username)
        adapter_ids: list[str] = []
        for dep in deps_store.list_by_owner(s, user.id):
            on_base = deps_store.mark_deleted(s, dep, "owner account deleted")
            adapter_ids += [a.id for a in on_base]
        now = utcnow()
        for adapter in adapters_store.list_owned(s, user.id):
            if adapter.deleted_at is not None:  # on one of the deployments above
                continue
            adapter.deleted_at = now
            adapter_ids.append(adapter.id)
            deps_store.add_event(
                s,
                adapter.base_deploy_id,
                "adapter_deleted",
                f"adapter {username}/{adapter.name} deleted with its owner's account",
            )
        users_store.delete_user(s, user)
    services.notify()
    # As DELETE /v1/adapters: the files go once the rows say deleted.
    root = files.adapters_root(services.settings.data_dir)
    for adapter_id in adapter_ids:
        files.remove(root / adapter_id)
    return UserDeletedPublic(username=username)


@router.get("/v1/me")
def me(who: PrincipalDep, services: ServicesDep) -> MePublic:
    with services.db.session() as s:
        reserved = gpus_reserved(deps_store.quota_items(s, who.user_id))
    return MePublic(
        username=who.username,
        is_admin=who.is_admin,
        gpu_limit=who.gpu_limit,
        gpus_reserved=reserved,
    )


@router.get("/v1/api-tokens")
def list_tokens(who: PrincipalDep, services: ServicesDep) -> list[TokenPublic]:
    with services.db.session() as s:
        return [token_object(t) for t in users_store.list_tokens(s, who.user_id)]


@router.post("/v1/api-tokens", status_code=201, responses=errors(409, 422))
def create_token(body: CreateToken, who: PrincipalDep, services: ServicesDep) -> TokenCreatedPublic:
    with services.db.session() as s:
        user = users_store.get_user(s, who.username)
        limits = body.rate_limits.to_limits() if body.rate_limits is not None else None
        row, plaintext = users_store.issue_token(s, user, body.name, limits)
        return created_token_object(row, plaintext)


@router.delete("/v1/api-tokens/{token_id}", responses=errors(404))
def revoke_token(token_id: str, who: PrincipalDep, services: ServicesDep) -> TokenRevokedPublic:
    with services.db.session() as s:
        users_store.revoke_token(s, who.user_id, token_id)
    return TokenRevokedPublic(token_id=token_id)
