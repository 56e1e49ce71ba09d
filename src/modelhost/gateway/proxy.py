"""Forward one inference request to a replica and stream its answer back.

Streams pass through chunk by chunk (never buffered whole). A client that goes away cancels
the upstream request, which frees the sequence's slot in the engine. A replica that dies
mid-stream ends the stream with an error event, never with a stream that looks complete.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from modelhost.errors import ModelhostError, UpstreamFailed, UpstreamTimeout
from modelhost.gateway.pool import DeploymentPool, Lease

Style = Literal["openai", "lorax"]
T = TypeVar("T")

DISCONNECT_POLL_S = 0.25
CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class Upstream:
    """Where a request goes: the path on the replica, the body, and the adapter (the engine's
    id, sent as the `x-adapter-id` header; the user-facing name comes back in the response)."""

    path: str
    body: bytes
    stream: bool
    adapter_id: str | None = None
    adapter_name: str | None = None


@dataclass
class ForwardResult:
    """What metering and metrics need to know about one forwarded request."""

    status: int = 0
    cold: bool = False
    queued_s: float = 0.0
    first_byte_s: float | None = None
    replica_id: str | None = None


class ClientGone(Exception):
    """The client closed its connection before we answered."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


def sse_error(err: ModelhostError, style: Style) -> bytes:
    if style == "lorax":
        # LoRAX's word for a stream cut short, so its client raises IncompleteGenerationError.
        kind = "incomplete_generation" if isinstance(err, UpstreamFailed) else err.code
        payload: dict[str, Any] = {"error": err.message, "error_type": kind or "error"}
    else:
        payload = {
            "error": {
                "message": err.message,
                "type": err.error_type,
                "param": err.param,
                "code": err.code,
            }
        }
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _connect(
    client: httpx.AsyncClient,
    pool: DeploymentPool,
    path: str,
    body: bytes,
    headers: dict[str, str],
    adapter_id: str | None,
) -> tuple[Lease, httpx.Response]:
    """Acquire a replica and open the upstream request; a replica that refuses the connection
    (it just died, or is shutting down) is skipped and the request tries another."""
    last: Exception | None = None
    for _ in range(CONNECT_ATTEMPTS):
        lease = await pool.acquire(adapter_id)
        try:
            req = client.build_request(
                "POST", lease.endpoint.url + path, content=body, headers=headers
            )
            return lease, await client.send(req, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            pool.release(lease)
            pool.mark_unroutable(lease.endpoint.replica_id)
            last = exc
        except BaseException:
            pool.release(lease)
            raise
    raise UpstreamFailed(f"no replica of {pool.deploy_id} accepted the request: {last}")


async def forward(
    request: Request,
    client: httpx.AsyncClient,
    pool: DeploymentPool,
    up: Upstream,
    style: Style,
    timeout_s: float,
    on_done: Callable[[ForwardResult], None],
) -> Response:
    started = time.monotonic()
    result = ForwardResult()
    headers = {"content-type": "application/json"}
    if up.adapter_id:
        headers["x-adapter-id"] = up.adapter_id
    lease, upstream = await until_disconnect(
        request, _connect(client, pool, up.path, up.body, headers, up.adapter_id)
    )
    result.cold, result.queued_s = lease.cold, lease.queued_s
    result.replica_id = lease.endpoint.replica_id
    extra = {
        "x-replica": lease.endpoint.replica_id,
        "x-queue-time": f"{lease.queued_s:.4f}",
    }
    if up.adapter_name:
        extra["x-adapter-id"] = up.adapter_name
    if not up.stream or upstream.status_code != 200:
        try:
            data = await until_disconnect(request, asyncio.wait_for(upstream.aread(), timeout_s))
        except TimeoutError:
            raise UpstreamTimeout(f"the engine did not answer within {timeout_s:.0f}s") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise UpstreamFailed(
                f"replica {lease.endpoint.replica_id} failed while answering: {type(exc).__name__}"
            ) from None
        finally:
            await upstream.aclose()
            pool.release(lease)
            result.status = upstream.status_code
            result.first_byte_s = time.monotonic() - started
            on_done(result)
        return Response(
            data,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
            headers=extra,
        )

    async def body_iter() -> AsyncIterator[bytes]:
        result.status = 200
        try:
            async for chunk in upstream.aiter_raw():
                if result.first_byte_s is None:
                    result.first_byte_s = time.monotonic() - started
                yield chunk
        except (httpx.TransportError, httpx.StreamError) as exc:
            result.status = 502
            yield sse_error(
                UpstreamFailed(
                    f"replica {lease.endpoint.replica_id} failed mid-stream "
                    f"({type(exc).__name__}); the response is incomplete"
                ),
                style,
            )
        finally:
            await upstream.aclose()
            pool.release(lease)
            on_done(result)

    return StreamingResponse(
        body_iter(),
        media_type="text/event-stream",
        headers={**extra, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )
