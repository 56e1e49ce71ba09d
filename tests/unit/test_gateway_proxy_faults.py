"""The gateway's forwarding under faults, against real sockets on 127.0.0.1: a client that
leaves exactly when its replica slot arrives, a replica that closes before answering or refuses
connections while the routing snapshot still lists it, and the drain cutting a stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from modelhost.domain.routing import ReplicaEndpoint
from modelhost.gateway import proxy
from modelhost.gateway.drain import Drain, DrainMiddleware
from modelhost.gateway.pool import DeploymentPool, PoolLimits
from modelhost.gateway.proxy import ClientGone, ForwardResult, Upstream, forward
from modelhost.gateway.stream import ProxiedStream
from modelhost.gateway.upstream import UpstreamClient
from tests.conftest import free_port

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENT = b'data: {"choices": []}\n\n'
JSON_ANSWER = b'{"ok": true}'


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Replica:
    """A raw HTTP/1.1 server standing in for an engine. `mode`: "hold" answers a stream once
    `release` is set, "close" drops every connection before answering, "json" answers whole,
    "stream" sends one event and holds. `closed` is set when a client closes a held stream."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.release = asyncio.Event()
        self.closed = asyncio.Event()
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def endpoint(self, replica_id: str) -> ReplicaEndpoint:
        return ReplicaEndpoint(replica_id, "dep", f"http://127.0.0.1:{self.port}", 1, 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
            self.requests += 1
            if self.mode == "close":
                return
            if self.mode == "json":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(JSON_ANSWER)}\r\n\r\n".encode()
                    + JSON_ANSWER
                )
                await writer.drain()
                await reader.read()
                return
            if self.mode == "hold":
                await self.release.wait()
            writer.write(SSE_HEAD + chunk(EVENT))
            await writer.drain()
            await reader.read()  # until the gateway closes the upstream request
            self.closed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[[str], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def make(mode: str) -> Replica:
        replica = Replica(mode)
        await replica.start()
        started.append(replica)
        return replica

    yield make
    for replica in started:
        await replica.stop()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(30)
    try:
        yield c
    finally:
        await c.aclose()


def make_pool(
    *endpoints: ReplicaEndpoint, clock: Callable[[], float] | None = None
) -> DeploymentPool:
    limits = PoolLimits(queue_factor=4, queue_min=8, queue_timeout_s=30, cold_start_timeout_s=30)
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    pool = DeploymentPool("dep", limits, lambda _: None, **kwargs)
    pool.update(endpoints)
    return pool


class StaysConnected:
    async def is_disconnected(self) -> bool:
        return False


async def bounded(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (bounded, a guard against hangs) until predicate() is true."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def test_a_slot_granted_while_the_client_leaves_is_released(
    replicas: Callable[[str], Awaitable[Replica]],
    client: UpstreamClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race of issue 9 item 1: the lease and the upstream answer arrive while the gateway
    is asking whether the client is gone, and the answer is yes. Both must be given back."""
    monkeypatch.setattr(proxy, "DISCONNECT_POLL_S", 0.01)
    replica = await replicas("hold")
    pool = make_pool(replica.endpoint("r1"))

    class LeavesAsTheSlotArrives:
        async def is_disconnected(self) -> bool:
            replica.release.set()  # the replica answers only now...
            [connect] = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_connect"]  # type: ignore[union-attr]
            await asyncio.wait({connect})  # ...and the gateway has its answer before we say
            return True

    up = Upstream("/v1/chat/completions", b"{}", stream=True)
    with pytest.raises(ClientGone):
        await forward(
            LeavesAsTheSlotArrives(),  # type: ignore[arg-type]
            client,
            pool,
            up,
            "openai",
            30,
            Drain(),
            lambda _: None,
        )
    await bounded(lambda: pool.in_flight == 0, "the replica slot given back")
    # The upstream request was closed, which is what makes the engine cancel the sequence.
    await asyncio.wait_for(replica.closed.wait(), 10)


async def test_a_slot_granted_as_a_queued_client_leaves_is_released(
    replicas: Callable[[str], Awaitable[Replica]],
    client: UpstreamClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other side of the race: a queued request's slot is granted in the very step in
    which its client is found gone. (Python 3.11's wait_for swallowed that cancellation: the
    request went on to the replica and its slot was never given back.)"""
    monkeypatch.setattr(proxy, "DISCONNECT_POLL_S", 0.01)
    replica = await replicas("stream")
    pool = make_pool(replica.endpoint("r1"))
    blocker = await pool.acquire()  # the only slot is taken: the request queues

    class LeavesAsItsTurnComes:
        async def is_disconnected(self) -> bool:
            pool.release(blocker)  # its turn comes...
            return True  # ...and its client is gone, in the same step

    up = Upstream("/v1/chat/completions", b"{}", stream=True)
    with pytest.raises(ClientGone):
        await forward(
            LeavesAsItsTurnComes(),  # type: ignore[arg-type]
            client,
            pool,
            up,
            "openai",
            30,
            Drain(),
            lambda _: None,
        )
    await bounded(lambda: pool.in_flight == 0 and not pool.queued, "the slot given back")
    assert replica.requests == 0, "the departed request went on to the replica"


async def test_a_stream_whose_client_left_as_it_began_releases_its_slot(
    replicas: Callable[[str], Awaitable[Replica]], client: UpstreamClient
) -> None:
    replica = await replicas("stream")
    upstream = await client.post(f"http://127.0.0.1:{replica.port}", "/x", b"{}", {})
    ended: list[int] = []
    response = ProxiedStream(
        upstream,
        replica_id="r1",
        style="openai",
        drain=Drain(),
        started=0.0,
        on_first_byte=lambda _: None,
        on_end=ended.append,
        headers={},
    )

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(_: Any) -> None:
        await asyncio.sleep(0.01)  # a slow client: the hang-up is noticed mid-stream

    await response({"type": "http"}, gone, send)
    assert ended == [200]
    await asyncio.wait_for(replica.closed.wait(), 10)


async def test_a_replica_that_closes_before_answering_is_retried_on_another(
    replicas: Callable[[str], Awaitable[Replica]], client: UpstreamClient
) -> None:
    dying, healthy = await replicas("close"), await replicas("json")
    pool = make_pool(dying.endpoint("r1"), healthy.endpoint("r2"))
    results: list[ForwardResult] = []
    up = Upstream("/v1/completions", b"{}", stream=False)
    response = await forward(
        StaysConnected(),  # type: ignore[arg-type]
        client,
        pool,
        up,
        "openai",
        30,
        Drain(),
        results.append,
    )
    assert response.status_code == 200 and response.body == JSON_ANSWER
    assert response.headers["x-replica"] == "r2"
    assert dying.requests == 1 and pool.in_flight == 0
    assert [r.status for r in results] == [200]


async def test_a_refused_request_waits_for_the_replacement_replica(
    replicas: Callable[[str], Awaitable[Replica]], client: UpstreamClient
) -> None:
    """The only replica died (connections refused) but the routing snapshot still lists it for
    a pass or two: the request is held for the replacement instead of failing at once."""
    now = [0.0]
    dead = ReplicaEndpoint("r1", "dep", f"http://127.0.0.1:{free_port()}", 1, 1)
    pool = make_pool(dead, clock=lambda: now[0])
    up = Upstream("/v1/completions", b"{}", stream=False)
    task = asyncio.ensure_future(
        forward(StaysConnected(), client, pool, up, "openai", 30, Drain(), lambda _: None)  # type: ignore[arg-type]
    )
    await bounded(lambda: pool.held == 1 or task.done(), "the request held")
    assert pool.held == 1, task
    pool.update([dead])  # the reconciler has not noticed yet
    assert pool.held == 1, "the dead replica must not be routable again at once"
    replacement = await replicas("json")
    pool.update([dead, replacement.endpoint("r2")])
    response = await asyncio.wait_for(task, 10)
    assert response.status_code == 200 and response.headers["x-replica"] == "r2"
    assert pool.in_flight == 0


async def test_the_drain_ends_a_stream_with_an_error_event(
    replicas: Callable[[str], Awaitable[Replica]], client: UpstreamClient
) -> None:
    replica = await replicas("stream")
    pool = make_pool(replica.endpoint("r1"))
    drain = Drain()
    ended: list[ForwardResult] = []

    class Request:
        async def is_disconnected(self) -> bool:
            return False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        up = Upstream("/v1/chat/completions", b"{}", stream=True)
        response = await forward(
            Request(),  # type: ignore[arg-type]
            client,
            pool,
            up,
            "openai",
            30,
            drain,
            ended.append,
        )
        await response(scope, receive, send)

    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body") and not drain.draining:
            drain.begin(0)  # the stream is running: the grace period ends now

    await asyncio.wait_for(
        DrainMiddleware(app, drain)({"type": "http", "path": "/x"}, receive, send), 10
    )
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies[0]["body"] == EVENT and bodies[-1]["more_body"] is False
    tail = bodies[-1]["body"].decode()
    assert tail.startswith("data: ")
    assert json.loads(tail[len("data: ") :])["error"]["code"] == "shutting_down"
    assert [r.status for r in ended] == [503] and pool.in_flight == 0
    await asyncio.wait_for(replica.closed.wait(), 10)


async def test_the_drain_ends_any_other_open_request() -> None:
    drain = Drain()

    async def endless(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"line\n", "more_body": True})
        await asyncio.Event().wait()

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    sent: dict[str, list[dict[str, Any]]] = {"endless": [], "waits": []}

    def sender(name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def send(message: dict[str, Any]) -> None:
            sent[name].append(message)

        return send

    scope = {"type": "http", "path": "/x"}
    runs = [
        asyncio.ensure_future(DrainMiddleware(endless, drain)(scope, receive, sender("endless"))),
        asyncio.ensure_future(DrainMiddleware(waits, drain)(scope, receive, sender("waits"))),
    ]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    drain.begin(0)
    await asyncio.wait_for(asyncio.gather(*runs), 10)
    assert sent["endless"][-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert sent["waits"][0]["status"] == 503
    body = json.loads(b"".join(m.get("body", b"") for m in sent["waits"][1:]))
    assert body["error"]["code"] == "shutting_down"


async def test_readyz_fails_as_soon_as_the_drain_begins() -> None:
    drain = Drain()

    async def ready(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "path": "/readyz"}
    await DrainMiddleware(ready, drain)(scope, receive, send)
    drain.begin(60)
    await DrainMiddleware(ready, drain)(scope, receive, send)
    assert statuses == [200, 503]


@pytest.mark.parametrize(
    ("path", "lorax"),
    [
        ("/deployments/alice/m/generate", True),
        ("/deployments/v1/m", True),
        ("/deployments/alice/m/v1/chat/completions", False),
        ("/v1/openai/completions", False),
    ],
)
async def test_a_request_cut_before_it_answered_gets_a_503_in_its_routes_shape(
    path: str, lorax: bool
) -> None:
    drain = Drain()

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run = asyncio.ensure_future(
        DrainMiddleware(waits, drain)({"type": "http", "path": path}, receive, send)
    )
    await asyncio.sleep(0)
    drain.begin(0)
    await asyncio.wait_for(run, 10)
    assert sent[0]["status"] == 503
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    if lorax:
        assert body["error_type"] == "shutting_down" and isinstance(body["error"], str)
    else:
        assert body["error"]["code"] == "shutting_down"
