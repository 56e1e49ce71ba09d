"""A replica's SSE answer passed through to the client, chunk by chunk (never buffered whole).

The response owns the request's replica slot (lease) and the upstream response from the moment
it is built, and releases both however the stream ends: complete; the replica failing (a final
error event); the client leaving (the upstream request is closed, so the engine cancels the
sequence at once); or the server's drain cutting it (a final error event). It never ends as if
complete when it is not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelhost.errors import UpstreamFailed
from modelhost.gateway.drain import Drain, shutting_down
from modelhost.gateway.lorax_bridge import StreamTransform
from modelhost.gateway.upstream import UpstreamResponse
from modelhost.gateway.usage_meter import StreamUsage
from modelhost.web.errors import Shape, sse_error


class ProxiedStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        upstream: UpstreamResponse,
        *,
        replica_id: str,
        style: Shape,
        drain: Drain,
        started: float,
        on_first_byte: Callable[[float], None],
        on_end: Callable[[int], None],
        headers: Mapping[str, str],
        transform: StreamTransform | None = None,
        usage: StreamUsage | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._upstream = upstream
        self._replica_id = replica_id
        self._style: Shape = style
        self._drain = drain
        self._started = started
        self._on_first_byte = on_first_byte
        self._on_end = on_end  # releases the lease and records the request; called once
        # Rewrites the replica's events (an engine answering in another API's shape).
        self._transform = transform
        # Reads the engine's token counts from the events (and drops a usage chunk the client
        # did not ask for); after `transform`, so it sees what the client would.
        self._usage = usage
        self._status = 200
        self._task: asyncio.Task[Any] | None = None
        self._gone = False  # the client went away
        self._done = False  # past the point where a hang-up may cancel us

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await self._relay(send)
        finally:
            self._done = True
            watcher.cancel()
            try:
                await self._upstream.aclose()
            finally:
                self._on_end(self._status)

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._done and self._task is not None:
            self._gone = True
            self._task.cancel()

    async def _relay(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            first = True
            transform, usage = self._transform, self._usage
            async for chunk in self._upstream.aiter_raw():
                if transform is not None:
                    chunk = transform.feed(chunk)
                    if not chunk:
                        continue
                if usage is not None:
                    chunk = usage.feed(chunk)
                    if not chunk:
                        continue
                if first:
                    first = False
                    self._on_first_byte(time.monotonic() - self._started)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tail = b"" if transform is None else transform.end()
            if usage is not None:
                tail = usage.feed(tail) + usage.end()
        except asyncio.CancelledError:
            if not self._only_ours():
                raise
            if self._gone:
                return  # nobody to tell; closing the upstream request cancels the sequence
            self._status = 503
            tail = sse_error(shutting_down(), self._style)
        except (httpx.TransportError, httpx.StreamError) as exc:
            self._status = 502
            err = UpstreamFailed(
                f"replica {self._replica_id} failed mid-stream ({type(exc).__name__}); "
                "the response is incomplete"
            )
            tail = sse_error(err, self._style)
        self._done = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _only_ours(self) -> bool:
        """Withdraw our own cancellations (the client's hang-up, the drain's cut): True when
        no one else cancelled us too."""
        task = self._task
        assert task is not None
        if self._gone:
            task.uncancel()
        cut = self._drain.absorb()
        return (self._gone or cut) and task.cancelling() == 0
