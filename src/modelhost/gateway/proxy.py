"""Forward one inference request to a replica and stream its answer back.

A request that did not reach a replica (connection refused: it just died, or is shutting
down), or whose replica closed the connection before answering, is tried again, on another
replica or, while none is routable, held like a cold start for the replacement; both bounded.
A client that goes away cancels the upstream request, which frees the sequence's slot in the
engine, and gives back the gateway's slot, whatever point the request had reached.

What is sent depends on the replica admission chose (a rolling update may mix engines): to an
engine without LoRAX routes or adapter loading of its own (vLLM), a LoRAX request is translated
(lorax_bridge.py) and an adapter is made resident first (adapter_residency.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import Response

from modelhost.errors import Unavailable, UpstreamFailed, UpstreamTimeout
from modelhost.gateway import lorax_bridge as bridge
from modelhost.gateway.adapter_residency import ReplicaAdmin
from modelhost.gateway.drain import Drain
from modelhost.gateway.pool import GATEWAY_LOADED_ADAPTERS, DeploymentPool, Lease
from modelhost.gateway.stream import ProxiedStream
from modelhost.gateway.upstream import UpstreamClient, UpstreamResponse
from modelhost.gateway.usage_meter import StreamUsage, Tokens, from_answer
from modelhost.web.errors import Shape

T = TypeVar("T")
log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
# Connections refused: the request never reached a replica, so retrying is free.
REFUSED_ATTEMPTS = 10
# Replicas that closed the connection before answering: the request may be what killed them,
# so it gets one more try only.
CLOSED_ATTEMPTS = 2
# How long a replica that failed a connection gets no new work (see DeploymentPool).
UNROUTABLE_S = 1.0
RETRY_AFTER_S = 5
# Engines whose requests the gateway rewrites per replica (see _exchange).
_TRANSLATED = GATEWAY_LOADED_ADAPTERS | bridge.ENGINES_WITHOUT_LORAX


@dataclass(frozen=True)
class Upstream:
    """Where a request goes: the path on the replica, the body, and the adapter (the engine's
    id, sent as the `x-adapter-id` header; the user-facing name comes back in the response)."""

    path: str
    body: bytes
    stream: bool
    adapter_id: str | None = None
    adapter_name: str | None = None
    # For replicas whose engine needs the request in another form (lorax_bridge): the LoRAX
    # request to translate, or the OpenAI request's body to send with the adapter's lora name.
    lorax: bridge.LoraxCall | None = None
    openai: dict[str, Any] | None = None
    # The gateway asked the engine for the stream's usage (usage_meter.ask_for_usage): the
    # usage chunk is metered, not sent to the client.
    drop_usage_chunk: bool = False


@dataclass
class Exchange:
    """What one attempt sends to the replica it got, and how the answer comes back."""

    path: str
    body: bytes
    headers: dict[str, str]
    # Rewrites a streamed answer (None: passed through as it is).
    stream: bridge.StreamTransform | None = None
    # Rewrites a whole answer: (status, body) -> (status, body).
    whole: Callable[[int, bytes], tuple[int, bytes]] | None = None
    media_type: str | None = None


@dataclass
class ForwardResult:
    """What metering and metrics need to know about one forwarded request."""

    status: int = 0
    cold: bool = False
    queued_s: float = 0.0
    first_byte_s: float | None = None
    # From arrival to the answer's last byte (queue time included); None when not answered.
    total_s: float | None = None
    replica_id: str | None = None
    # The engine's token counts, when it reported them (usage_meter.py).
    tokens: Tokens | None = None


class ClientGone(Exception):
    """The client closed its connection before we answered."""


# Clean-up of results that arrived after their request gave up; held until done.
_reaping: set[asyncio.Task[None]] = set()


async def until_disconnect(
    request: Request,
    work: Awaitable[T],
    discard: Callable[[T], Coroutine[Any, Any, None]] | None = None,
) -> T:
    """Run `work`, cancelling it if the client disconnects first (or this request is
    cancelled). A result it still produces once we have given up, even one that arrived while
    we were asking whether the client is gone, goes to `discard`, so that nothing it holds (a
    replica slot, an open upstream request) leaks."""
    task = asyncio.ensure_future(work)
    handed_over = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                handed_over = True
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not handed_over:
            _abandon(task, discard)


def _abandon(
    task: asyncio.Future[T], discard: Callable[[T], Coroutine[Any, Any, None]] | None
) -> None:
    task.cancel()

    def reap(done: asyncio.Future[T]) -> None:
        if done.cancelled() or done.exception() is not None or discard is None:
            return
        cleanup = asyncio.ensure_future(discard(done.result()))
        _reaping.add(cleanup)
        cleanup.add_done_callback(_reaping.discard)

    task.add_done_callback(reap)


async def _discard(pool: DeploymentPool, opened: tuple[Lease, Exchange, UpstreamResponse]) -> None:
    lease, _, upstream = opened
    try:
        await upstream.aclose()
    finally:
        pool.release(lease)


async def _exchange(
    up: Upstream, plain: Exchange, pool: DeploymentPool, lease: Lease, admin: ReplicaAdmin
) -> Exchange:
    """What to send to a replica whose engine lacks LoRAX's routes or loads adapters only
    through the gateway: the adapter made resident there first, and the request in a form the
    engine serves (`plain` when it needs no change)."""
    slot = lease.slot
    if up.adapter_id and slot.gateway_loads_adapters:
        await admin.ensure(pool, lease, up.adapter_id, up.adapter_name)
    lora_name = up.adapter_id or None
    headers = plain.headers
    if up.lorax is not None and not bridge.speaks_lorax(lease.endpoint.engine):
        call = up.lorax
        context = await admin.context_length(slot) if call.needs_context_length else None
        body = bridge.to_completion(call, lora_name, context)
        return Exchange(
            bridge.COMPLETIONS_PATH,
            bridge.compact_json(body).encode(),
            headers,
            stream=bridge.LoraxStream(call) if call.stream else None,
            whole=partial(bridge.lorax_answer, call),
            media_type="application/json",
        )
    if lora_name is not None and up.openai is not None and slot.gateway_loads_adapters:
        body = {**up.openai, "model": lora_name}
        name = up.adapter_name or lora_name
        return Exchange(
            up.path,
            bridge.compact_json(body).encode(),
            headers,
            stream=bridge.RenameModelStream(lora_name, name),
            whole=lambda status, data: (status, bridge.rename_model(data, lora_name, name)),
        )
    return plain


async def _connect(
    client: UpstreamClient,
    pool: DeploymentPool,
    up: Upstream,
    headers: dict[str, str],
    timeout_s: float,
    admin: ReplicaAdmin | None = None,
) -> tuple[Lease, Exchange, UpstreamResponse]:
    """Acquire a replica and open the upstream request (for a non-streaming request the
    engine answers whole, so this lasts the whole generation)."""
    plain = Exchange(up.path, up.body, headers)
    refused = closed = 0
    deadline: float | None = None
    while True:
        lease = await pool.acquire(up.adapter_id, deadline)
        replica = lease.endpoint.replica_id
        try:
            ex = plain
            if admin is not None and lease.endpoint.engine in _TRANSLATED:
                ex = await _exchange(up, plain, pool, lease, admin)
            return lease, ex, await client.post(lease.endpoint.url, ex.path, ex.body, ex.headers)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            refused += 1
            what = "refused the connection"
        except httpx.TimeoutException:
            pool.release(lease)
            raise UpstreamTimeout(f"the engine did not answer within {timeout_s:.0f}s") from None
        except httpx.TransportError as exc:
            closed += 1
            what = f"closed the connection before answering ({type(exc).__name__})"
        except BaseException:
            pool.release(lease)
            raise
        pool.release(lease)
        pool.mark_unroutable(replica, UNROUTABLE_S)
        if closed >= CLOSED_ATTEMPTS:
            raise UpstreamFailed(
                f"the replicas of deployment {pool.deploy_id} failed while answering this "
                f"request ({closed} tries)"
            )
        if refused >= REFUSED_ATTEMPTS:
            raise Unavailable(
                f"no replica of deployment {pool.deploy_id} took the request "
                f"({refused} tries); retry shortly",
                code="replica_unavailable",
                retry_after=RETRY_AFTER_S,
            )
        log.info("deployment %s: replica %s %s; retrying", pool.deploy_id, replica, what)
        if deadline is None:
            # Retries wait for a replica at most as long as a cold start would.
            deadline = pool.clock() + pool.limits.cold_start_timeout_s


async def forward(
    request: Request,
    client: UpstreamClient,
    pool: DeploymentPool,
    up: Upstream,
    style: Shape,
    timeout_s: float,
    drain: Drain,
    on_done: Callable[[ForwardResult], None],
    admin: ReplicaAdmin | None = None,
) -> Response:
    started = time.monotonic()
    result = ForwardResult()
    headers = {"content-type": "application/json"}
    if up.adapter_id:
        headers["x-adapter-id"] = up.adapter_id
    lease, ex, upstream = await until_disconnect(
        request, _connect(client, pool, up, headers, timeout_s, admin), partial(_discard, pool)
    )
    result.cold, result.queued_s = lease.cold, lease.queued_s
    result.replica_id = lease.endpoint.replica_id
    extra = {
        "x-replica": lease.endpoint.replica_id,
        "x-queue-time": f"{lease.queued_s:.4f}",
    }
    if up.adapter_name:
        extra["x-adapter-id"] = up.adapter_name
    if up.stream and upstream.status_code == 200:
        usage = StreamUsage(up.drop_usage_chunk)

        def first_byte(elapsed: float) -> None:
            result.first_byte_s = elapsed

        def end(status: int) -> None:
            result.status = status
            result.total_s = time.monotonic() - started
            result.tokens = usage.billable()
            pool.release(lease)
            on_done(result)

        return ProxiedStream(
            upstream,
            replica_id=lease.endpoint.replica_id,
            style=style,
            drain=drain,
            started=started,
            on_first_byte=first_byte,
            on_end=end,
            headers={**extra, "cache-control": "no-cache", "x-accel-buffering": "no"},
            transform=ex.stream,
            usage=usage,
        )
    data: bytes | None = None
    try:
        data = await until_disconnect(request, asyncio.wait_for(upstream.aread(), timeout_s))
    except TimeoutError:
        raise UpstreamTimeout(f"the engine did not answer within {timeout_s:.0f}s") from None
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise UpstreamFailed(
            f"replica {lease.endpoint.replica_id} failed while answering: {type(exc).__name__}"
        ) from None
    finally:
        try:
            await upstream.aclose()
        finally:
            pool.release(lease)
            result.status = upstream.status_code
            result.first_byte_s = result.total_s = time.monotonic() - started
            if data is not None and result.status == 200:
                result.tokens = from_answer(data, upstream.headers)
            on_done(result)
    status = upstream.status_code
    if ex.whole is not None:
        status, data = ex.whole(status, data)
    return Response(
        data,
        status_code=status,
        media_type=ex.media_type or upstream.headers.get("content-type", "application/json"),
        headers=extra,
    )
