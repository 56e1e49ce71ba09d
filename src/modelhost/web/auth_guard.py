"""Connects the failed-authentication throttle to requests.

`resolve_principal(services, token)` is shared by the control plane and the gateway and gets
no request, so this ASGI middleware records the caller's address for the request in a context
variable (which `asyncio.to_thread` and the thread pool of sync routes carry along), and
`check`, `failed` and `succeeded` read it there.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from modelhost.errors import Kind, ServiceError
from modelhost.security.auth_throttle import AuthThrottle


class AuthThrottled(ServiceError):
    """Too many failed authentications from the caller's address."""

    kind = Kind.BUSY
    code = "auth_throttled"


@dataclass(frozen=True)
class _Caller:
    throttle: AuthThrottle
    address: str


_caller: ContextVar[_Caller | None] = ContextVar("modelhost_auth_caller", default=None)


class AuthGuardMiddleware:
    def __init__(self, app: ASGIApp, throttle: AuthThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.throttle.enabled:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        # The peer address: behind a reverse proxy every client shares the proxy's (headers
        # such as X-Forwarded-For are not trusted: any client could set them).
        address = str(client[0]) if client else "unknown"
        reset = _caller.set(_Caller(self.throttle, address))
        try:
            await self.app(scope, receive, send)
        finally:
            _caller.reset(reset)


def check(token_digest: str) -> None:
    """Raise 429 when the caller's address is throttled and this token is not known good."""
    caller = _caller.get()
    if caller is None:
        return
    wait = caller.throttle.retry_after(caller.address, token_digest)
    if wait is not None:
        raise AuthThrottled(
            "too many failed authentications from your address; retry later",
            retry_after=wait,
        )


def failed() -> None:
    caller = _caller.get()
    if caller is not None:
        caller.throttle.failed(caller.address)


def succeeded(token_digest: str) -> None:
    caller = _caller.get()
    if caller is not None:
        caller.throttle.succeeded(token_digest)
