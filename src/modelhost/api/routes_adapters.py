"""LoRA adapters: register on a base deployment, list, get, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelhost.adapters import files
from modelhost.adapters.base_dims import base_dims
from modelhost.adapters.validate import AdapterError, check_adapter
from modelhost.api.deps import ApiServices, PrincipalDep, ServicesDep
from modelhost.api.schemas import (
    AdapterDeletedPublic,
    AdapterPublic,
    AdaptersPublic,
    CreateAdapter,
)
from modelhost.api.views import adapter_object
from modelhost.domain.access import may_use
from modelhost.domain.deployments import MODEL_NAME_RE
from modelhost.errors import Conflict, NotFound, ValidationFailed
from modelhost.orchestrator.launch import weights_path
from modelhost.security.local_sources import allowed_local_path
from modelhost.security.tokens import new_id
from modelhost.store import adapters as store
from modelhost.store import deployments as deps_store
from modelhost.store.clock import utcnow
from modelhost.store.tables import Adapter, Deployment, User
from modelhost.store.users import Principal
from modelhost.web.openapi import errors

router = APIRouter()
NOTES = {
    403: "a `local` source without the right to name server paths (`local_source_forbidden`)",
    404: "the base deployment is unknown, or another user's private one",
    409: "you have an adapter or deployment of this name (`name_in_use`)",
}


def _view(services: ApiServices, a: Adapter) -> AdapterPublic:
    with services.db.session() as s:
        base = s.get(Deployment, a.base_deploy_id)
        owner = deps_store.owner_name(s, base) if base else "?"
        base_name = f"{owner}/{base.model_name}" if base else "?"
        user = s.get(User, a.owner_id)
        return adapter_object(a, user.username if user else "?", base_name)


def _base(services: ApiServices, who: Principal, base: str) -> Deployment:
    """A base the caller may use (`domain.access.may_use`); any other answers as unknown."""
    username, _, name = base.partition("/")
    with services.db.session() as s:
        dep = deps_store.find_by_name(s, username, name) if name else None
        if dep is None or not may_use(
            owner_id=dep.owner_id, public=dep.public, user_id=who.user_id, is_admin=who.is_admin
        ):
            raise NotFound(f"base deployment {base!r} not found", param="base")
        s.expunge(dep)
        return dep


# The adapter object's `source` holds only the key that applies (see api.schemas).
@router.post(
    "/v1/adapters",
    status_code=201,
    response_model=AdapterPublic,
    response_model_exclude_unset=True,
    responses=errors(403, 404, 409, 422, notes=NOTES),
)
def create_adapter(body: CreateAdapter, who: PrincipalDep, services: ServicesDep) -> AdapterPublic:
    if not MODEL_NAME_RE.match(body.name):
        raise ValidationFailed("name must match [a-z0-9][a-z0-9._-]{0,63}", param="name")
    sources = [k for k in ("hf", "local") if getattr(body.source, k) is not None]
    if len(sources) != 1:
        raise ValidationFailed("source needs exactly one of hf or local", param="source")
    local = None
    if body.source.local is not None:
        local = allowed_local_path(
            body.source.local.path,
            is_admin=who.is_admin,
            root=services.settings.local_sources_root,
            data_dir=services.settings.data_dir,
            param="source.local.path",
        )
    base = _base(services, who, body.base)
    with services.db.session() as s:
        if store.name_taken(s, who.user_id, body.name):
            raise Conflict(
                f"you already have an adapter or deployment named {body.name!r}",
                param="name",
                code="name_in_use",
            )
    adapter_id = new_id("a")
    dest = files.adapters_root(services.settings.data_dir) / adapter_id
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = body.source.hf.token if body.source.hf is not None else None
    try:
        if body.source.local is not None:
            # The path checked above (for non-admins: resolved), not the one given.
            assert local is not None
            got = files.copy_local(local, dest)
            source: dict[str, Any] = {"local": {"path": body.source.local.path}}
        else:
            assert body.source.hf is not None
            hf = body.source.hf
            got = files.download_hf(hf.repo, hf.revision, token, dest)
            source = {"hf": {"repo": hf.repo, "revision": hf.revision or "main"}}
        dims = base_dims(weights_path(base, services.catalog))
        info = check_adapter(got.config, got.shapes, dims)
    except AdapterError as exc:
        files.remove(dest)
        param = exc.param if exc.param != "source" else f"source.{sources[0]}"
        raise ValidationFailed(str(exc), param=param) from None
    except BaseException:
        files.remove(dest)
        raise
    with services.db.session() as s:
        if store.name_taken(s, who.user_id, body.name):
            files.remove(dest)
            raise Conflict(f"name {body.name!r} was just taken", param="name", code="name_in_use")
        row = Adapter(
            id=adapter_id,
            owner_id=who.user_id,
            name=body.name,
            base_deploy_id=base.id,
            source=source,
            hf_token_enc=services.secrets.encrypt(token) if token else None,
            public=body.public,
            rank=info.rank,
            target_modules=list(info.target_modules),
            size_bytes=got.size_bytes,
            created_at=utcnow(),
        )
        s.add(row)
        deps_store.add_event(
            s,
            base.id,
            "adapter_registered",
            f"adapter {who.username}/{body.name} (rank {info.rank})",
        )
    return _view(services, row)


@router.get("/v1/adapters", response_model=AdaptersPublic, response_model_exclude_unset=True)
def list_adapters(who: PrincipalDep, services: ServicesDep) -> AdaptersPublic:
    with services.db.session() as s:
        rows = store.list_owned(s, who.user_id)
    return AdaptersPublic(adapters=[_view(services, a) for a in rows])


@router.get(
    "/v1/adapters/{name}",
    response_model=AdapterPublic,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def get_adapter(name: str, who: PrincipalDep, services: ServicesDep) -> AdapterPublic:
    with services.db.session() as s:
        row = store.get_owned(s, who, name)
    return _view(services, row)


@router.delete("/v1/adapters/{name}", responses=errors(404))
def delete_adapter(name: str, who: PrincipalDep, services: ServicesDep) -> AdapterDeletedPublic:
    with services.db.session() as s:
        row = store.get_owned(s, who, name)
        row.deleted_at = utcnow()
        adapter_id = row.id
        deps_store.add_event(s, row.base_deploy_id, "adapter_deleted", f"adapter {name} deleted")
    # Replicas that hold it keep it resident until evicted, but the gateway no longer routes
    # to it, and a new adapter with the same name gets a new id and folder.
    files.remove(files.adapters_root(services.settings.data_dir) / adapter_id)
    return AdapterDeletedPublic(adapter_id=adapter_id, name=f"{who.username}/{name}")
