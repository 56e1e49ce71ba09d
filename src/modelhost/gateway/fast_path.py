"""Inference requests go straight to their handlers.

The inference routes stay declared on the router (OpenAPI, 405s, everything else), but a POST
to one of them is dispatched here by one dict lookup, past the framework's route matching over
every control-plane route, its exception and exit-stack middleware and its endpoint wrapper:
together about as much CPU per request as the gateway's own work. The handlers answer every
failure themselves (in their route's error shape), so nothing the skipped layers did applies
to them; an unexpected exception still reaches the server-error middleware outside, a 500.

Install it inside the auth guard (whose per-request context the handlers read).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from modelhost.gateway.routes import inference_handler


class GatewayFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = inference_handler(scope["path"])
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
