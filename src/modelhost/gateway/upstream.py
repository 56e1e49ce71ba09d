"""The gateway's HTTP/1.1 client to replicas: keep-alive connections per replica, responses
parsed by httptools (the C parser uvicorn uses), body chunks handed over as they arrive.

Why not httpx: on the request path it cost about as much CPU as the rest of the gateway
together (its connection pool's locks and liveness checks, header models, cookie handling),
none of which a POST to a replica on 127.0.0.1 needs.

Why not aiohttp's client (measured for issue 10, aiohttp 3.14.5 with its C parser, one
`ClientSession` + `TCPConnector` with keep-alive, no cookies, no decompression, no automatic
headers): behind this same interface it passed the gateway's fault tests, but the client alone
cost 100-240 µs of CPU per request against 24-29 µs for this one (a raw replica on 127.0.0.1,
8 and 64 concurrent requests, plain and streaming chat answers, medians of 3-5 rounds), and in
bench/gateway.py the gateway's CPU per request rose by about 17% (median of 8 cells, 575 ->
675 µs; 2 rounds each, alternated), outside the 10% that would have made the library the
better choice. Its cost is in
what this path does not need: request/response objects with URL (yarl) and multidict headers,
the timer and trace machinery, the payload writer. (It also never retries a POST on a
kept-alive connection the replica closed as it was reused, which the gateway needs; see below.)

Failures are raised as httpx's exception classes, so the proxy's retry rules (`proxy.py`) read
them as before:

- `httpx.ConnectError` / `ConnectTimeout`: no connection, the request never left;
- `httpx.RemoteProtocolError`: the replica closed the connection (or sent garbage) before or
  while answering (a `TransportError`);
- `httpx.ReadTimeout`: no byte for `timeout_s` while waiting for the answer or its next chunk.

A kept-alive connection the replica closed while idle (uvicorn closes them after 5 s) is
noticed when the close arrives, and dropped; one that closes just as it is reused, before any
byte of the answer, is retried once on a fresh connection, like browsers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx

CONNECT_TIMEOUT_S = 5.0
# Idle connections are dropped before the replica's own keep-alive timeout (uvicorn's 5 s), so
# a reused connection is rarely one the replica is closing.
IDLE_S = 4.0
MAX_IDLE_PER_REPLICA = 256
# Read-side flow control: stop reading a replica that is far ahead of its client.
PAUSE_AT = 256 * 1024
RESUME_AT = 64 * 1024


class _Closed(Exception):
    """The connection ended before the answer began (internal)."""


class _Connection(asyncio.Protocol):
    """One TCP connection; one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._paused = False
        self._begin()

    def _begin(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.got_bytes = False
        self.complete = False
        self.error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._headers_done = False
        self._keep_alive = False
        self._framed = False  # a Content-Length or chunked answer (else it ends at close)
        self._waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid answer from the replica: {exc}"))
            self._abort()
            return
        if self._buffered > PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.forget(self)
        if self._headers_done and not self._framed and not self.complete:
            self.complete = True  # an answer delimited by the close itself
            self._wake()
            return
        if not self.complete:
            if self._headers_done:
                what = f"the replica closed the connection mid-answer ({exc or 'EOF'})"
                self._fail(httpx.RemoteProtocolError(what))
            else:
                self._fail(_Closed())

    # ---- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.headers[key] = value.decode("latin-1")
        if key == "content-length" or (key == "transfer-encoding" and b"chunked" in value):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        # Asked now: the parser has moved on by the end of the message.
        self._keep_alive = self._parser.should_keep_alive()
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # ---- used by the client -----------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def _wait(self, timeout_s: float) -> None:
        self._waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await self._waiter
        except TimeoutError:
            self._abort()
            raise httpx.ReadTimeout(f"no answer from the replica within {timeout_s:.0f}s") from None
        finally:
            self._waiter = None

    def send(self, data: bytes) -> None:
        self._begin()
        assert self.transport is not None
        self.transport.write(data)

    async def head(self, timeout_s: float) -> None:
        while not self._headers_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout_s)

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """What has arrived of the body since the last call (waiting for something if nothing
        has), or None at its end. Pieces that arrived together go out together: one write to
        the client instead of one per piece, and never a wait for more."""
        while not self._chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(timeout_s)
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self._buffered < RESUME_AT and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and not self.lost
            and not self._chunks
            and self._keep_alive
        )

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """Idle keep-alive connections to one replica (most recently used first)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[_Connection] = deque()
        self.head_prefix = f"HTTP/1.1\r\nhost: {host}:{port}\r\n".encode("latin-1")

    def forget(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def take(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    def give_back(self, conn: _Connection) -> None:
        if conn.reusable() and len(self.idle) < MAX_IDLE_PER_REPLICA:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{self.host}:{self.port}: {exc.strerror or exc}") from None
        return conn


class UpstreamResponse:
    """A replica's answer: status and headers at once, the body as it arrives. Read it whole
    (`aread`) or in pieces (`aiter_raw`), then `aclose` (always; idempotent): a connection
    whose answer was read to the end goes back to the pool, any other is closed, which tells
    the engine to cancel the sequence."""

    def __init__(self, conn: _Connection, pool: _Pool, timeout_s: float) -> None:
        self._conn = conn
        self._pool = pool
        self._timeout_s = timeout_s
        self._closed = False
        self.status_code = conn.status
        self.headers: Mapping[str, str] = conn.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        while (chunk := await self._conn.next_chunk(self._timeout_s)) is not None:
            yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.give_back(self._conn)


class UpstreamClient:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pools: dict[str, _Pool] = {}

    def _pool(self, base_url: str) -> _Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            where = urlsplit(base_url)
            pool = _Pool(where.hostname or "127.0.0.1", where.port or 80)
            self._pools[base_url] = pool
        return pool

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """Send `body` to `base_url + path`; returns once the answer's headers arrived."""
        pool = self._pool(base_url)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = b"POST " + path.encode("latin-1") + b" " + pool.head_prefix
        data = head + f"{extra}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body
        while True:
            conn = pool.take()
            reused = conn is not None
            if conn is None:
                conn = await pool.connect()
            conn.send(data)
            try:
                await conn.head(self.timeout_s)
            except _Closed:
                if reused and not conn.got_bytes:
                    continue  # closed by the replica as it was reused: once more, afresh
                raise httpx.RemoteProtocolError(
                    "the replica closed the connection without answering"
                ) from None
            except BaseException:
                conn.close()
                raise
            return UpstreamResponse(conn, pool, self.timeout_s)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            while (conn := pool.take()) is not None:
                conn.close()
        self._pools.clear()
