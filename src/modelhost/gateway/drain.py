"""The server's drain when it is told to stop (SIGTERM, SIGINT).

Readiness fails at once and requests already running may finish during the grace period.
Shortly before the grace period ends, every request still open is *cut*: its task is cancelled
by the drain, and the code serving it answers properly instead of dying mid-write: a stream
ends with a final error event, a request with no byte sent yet gets a 503 `shutting_down`. That
leaves nothing for uvicorn to cancel at its own deadline (which would cut streams with an
"incomplete chunked read" and log a traceback).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelhost.errors import ShuttingDown
from modelhost.web.errors import render_for_path

# The margin between cutting requests and uvicorn's own deadline: time for the error events
# to be written and the connections to close.
CUT_MARGIN_S = 1.0
RETRY_AFTER_S = 5


def shutting_down() -> ShuttingDown:
    return ShuttingDown(
        "the server is shutting down and ended this request before it completed; retry it",
        retry_after=RETRY_AFTER_S,
    )


def cut_after(grace_s: float) -> float:
    """Seconds after the stop signal at which open requests are cut."""
    return max(0.0, grace_s - min(CUT_MARGIN_S, grace_s / 4))


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._open: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, cut_after_s: float) -> None:
        """Start draining (on the event loop); open requests are cut after `cut_after_s`."""
        if self.draining:
            return
        self.draining = True
        self._timer = asyncio.get_running_loop().call_later(cut_after_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        for task in list(self._open):
            if not task.done():
                self._cut.add(task)
                task.cancel("the server's shutdown grace period ended")

    def track(self, task: asyncio.Task[object]) -> None:
        self._open.add(task)
        if self.expired and task not in self._cut:
            # Opened after the cut (only possible in-process): cut at once.
            self._cut.add(task)
            task.cancel("the server's shutdown grace period ended")

    def untrack(self, task: asyncio.Task[object]) -> None:
        self._open.discard(task)
        self._cut.discard(task)

    def absorb(self) -> bool:
        """Call in a request's task that caught CancelledError: True when the drain cut it and
        nobody else cancelled it too; the cancellation is then withdrawn and the caller ends
        the request with `shutting_down()`. False: re-raise."""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        task.uncancel()
        return task.cancelling() == 0


class DrainMiddleware:
    """Tracks every HTTP request for the drain, fails /readyz while draining, and ends any
    request that did not end itself when cut (a 503, or the end of a body already begun)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] == "/readyz":
            await render_for_path("/readyz", _draining())(scope, receive, send)
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI apps always run in a task
            await self.app(scope, receive, send)
            return
        started = completed = False

        async def tracked(message: Message) -> None:
            nonlocal started, completed
            await send(message)
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True

        self.drain.track(task)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not self.drain.absorb():
                raise
            if not started:
                # In the error shape of the route (LoRAX's under its per-deployment base URL).
                await render_for_path(scope["path"], shutting_down())(scope, receive, send)
            elif not completed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.drain.untrack(task)


def _draining() -> ShuttingDown:
    return ShuttingDown("the server is shutting down", retry_after=RETRY_AFTER_S)
