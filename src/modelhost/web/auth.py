"""Who is calling: the API token from the request's headers, resolved to a `Principal`.

Callers are authenticated from the in-memory directory: no database session on the request
path. A token the directory does not know is re-checked once against the database's revision
before the 401 (it may have been created a moment ago, perhaps by another server process).
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request

from modelhost.directory.live import Directory
from modelhost.errors import Unauthorized
from modelhost.security.tokens import hash_token
from modelhost.store.token_usage import TokenUsage
from modelhost.store.users import Principal
from modelhost.web import auth_guard


class Callers(Protocol):
    """What authentication needs of the server's parts."""

    @property
    def directory(self) -> Directory: ...

    @property
    def token_usage(self) -> TokenUsage: ...


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


def _accept(parts: Callers, digest: str, who: Principal | None) -> Principal:
    if who is None:
        auth_guard.failed()
        raise Unauthorized("invalid or revoked API token")
    auth_guard.succeeded(digest)
    parts.token_usage.seen(who.token_id, who.token_last_used_at)
    return who


def resolve_principal(parts: Callers, token: str) -> Principal:
    """Blocking on a miss (the re-check reads the database): for sync routes and threads."""
    digest = hash_token(token)
    auth_guard.check(digest)
    directory = parts.directory
    who = directory.snapshot.principal(digest)
    if who is None:
        directory.refresh()
        who = directory.snapshot.principal(digest)
    return _accept(parts, digest, who)


async def authenticate(parts: Callers, token: str) -> Principal:
    """On the event loop: a known token costs a hash and a dict lookup; only a miss waits for
    the (shared, bounded) re-check."""
    digest = hash_token(token)
    auth_guard.check(digest)
    directory = parts.directory
    who = directory.snapshot.principal(digest)
    if who is None:
        who = (await directory.fresh()).principal(digest)
    return _accept(parts, digest, who)
