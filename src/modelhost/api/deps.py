"""FastAPI dependencies: the services container and the authenticated caller.

Callers are authenticated from the in-memory directory (`services.directory`): no database
session on the request path. A token the directory does not know is re-checked once against
the database's revision before the 401 (it may have been created a moment ago, perhaps by
another server process).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelhost.api import auth_guard
from modelhost.errors import Forbidden, Unauthorized
from modelhost.security.tokens import hash_token
from modelhost.services import Services
from modelhost.store.users import Principal


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def bearer_token(request: Request) -> str:
    """The token from `Authorization: Bearer` (never from the query string). DeepInfra's
    `xi-api-key` header is accepted too, so its clients work unchanged."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    alt = request.headers.get("xi-api-key", "").strip()
    if alt:
        return alt
    raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")


def _accept(services: Services, digest: str, who: Principal | None) -> Principal:
    if who is None:
        auth_guard.failed()
        raise Unauthorized("invalid or revoked API token")
    auth_guard.succeeded(digest)
    services.token_usage.seen(who.token_id, who.token_last_used_at)
    return who


def resolve_principal(services: Services, token: str) -> Principal:
    """Blocking on a miss (the re-check reads the database): for sync routes and threads."""
    digest = hash_token(token)
    auth_guard.check(digest)
    directory = services.directory
    who = directory.snapshot.principal(digest)
    if who is None:
        directory.refresh()
        who = directory.snapshot.principal(digest)
    return _accept(services, digest, who)


async def authenticate(services: Services, token: str) -> Principal:
    """On the event loop: a known token costs a hash and a dict lookup; only a miss waits for
    the (shared, bounded) re-check."""
    digest = hash_token(token)
    auth_guard.check(digest)
    directory = services.directory
    who = directory.snapshot.principal(digest)
    if who is None:
        who = (await directory.fresh()).principal(digest)
    return _accept(services, digest, who)


def get_principal(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Principal:
    return resolve_principal(services, bearer_token(request))


def get_admin(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not who.is_admin:
        raise Forbidden("this route is for admins only", code="admin_only")
    return who


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
