"""Running one generation for an HTTP request: admission, the generator's token stream, the
client's disconnect, metrics, and errors before or after the first byte.

The OpenAI and LoRAX surfaces differ only in how they render; a `Renderer` does that. Every
generation endpoint returns a `GenerationResponse`, an ASGI response that decides its status
line late: it waits for the generator's first event before sending headers, so a request the
generator rejects (context length, unknown adapter) still gets a proper 4xx, and a gateway can
retry elsewhere when no byte has been sent. It also watches for the client going away the whole
time (queued or streaming) and then cancels the sequence at once, freeing its batch slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelhost.engine.metrics import BusyClock, EngineMetrics
from modelhost.engine.protocol import (
    ContextLengthExceeded,
    GenerationRequest,
    Generator,
    GeneratorError,
    TokenEvent,
    UnknownAdapter,
)

log = logging.getLogger(__name__)

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# The gateway names the engine's adapter id here (and keeps the user-facing name in `model`).
ADAPTER_HEADER = "x-adapter-id"
_END_OF_BODY = {"type": "http.response.body", "body": b"", "more_body": False}

# Compact, like other inference servers' JSON. Per-token code encodes plain strings with
# json.dumps, which keeps the C fast path.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


class ApiError(Exception):
    """A request failure the HTTP layer reports; each surface renders it in its own shape.

    `kind` is the failure's class: the `err` label of lorax_request_failure and LoRAX's
    `error_type` (validation, not_found, overloaded, unavailable, generation, internal).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "validation",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.retry_after = retry_after


def error_from_generator(exc: GeneratorError) -> ApiError:
    if isinstance(exc, ContextLengthExceeded):
        return ApiError(400, str(exc), code="context_length_exceeded", param=exc.param)
    if isinstance(exc, UnknownAdapter):
        return ApiError(404, str(exc), kind="not_found", code="model_not_found", param="model")
    return ApiError(400, str(exc), code="invalid_request")


@dataclass
class EngineState:
    """What every route of one engine app shares."""

    generator: Generator
    served_model_name: str
    max_batch_size: int
    max_in_flight: int
    default_max_tokens: int
    metrics: EngineMetrics
    engine_name: str
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0
    busy: BusyClock = field(default_factory=BusyClock)

    def check_available(self) -> None:
        if not self.generator.ready:
            raise ApiError(
                503,
                "The engine is starting (loading weights) or stopping; retry shortly.",
                kind="unavailable",
                code="engine_not_ready",
                retry_after=1,
            )


def with_default_max_tokens(state: EngineState, request: GenerationRequest) -> GenerationRequest:
    """`request` with max_tokens = the room left in the context after the prompt, capped by
    the engine's default; at least 1 so that an over-long prompt still reaches the generator
    and is reported as such."""
    room = state.generator.context_length - state.generator.count_prompt_tokens(request)
    max_tokens = max(1, min(room, state.default_max_tokens))
    return dataclasses.replace(
        request, params=dataclasses.replace(request.params, max_tokens=max_tokens)
    )


@dataclass
class Result:
    """A finished non-streaming generation."""

    text: str
    final: TokenEvent
    tokens: list[TokenEvent]


class Renderer(Protocol):
    """Formats one surface's bytes. `stream_event` is the per-token hot path."""

    stream: bool
    want_tokens: bool

    def error_body(self, err: ApiError) -> tuple[int, bytes]: ...

    def stream_event(self, event: TokenEvent) -> bytes: ...

    def stream_error(self, err: ApiError) -> bytes: ...

    def full_body(self, result: Result) -> bytes: ...


def _headers_for(err: ApiError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(err.retry_after).encode()))
    return headers


async def send_error(send: Send, renderer: Renderer, err: ApiError) -> None:
    status, body = renderer.error_body(err)
    headers = [*_headers_for(err), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _close(it: AsyncIterator[TokenEvent]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


_FAILED = ("error", "cancelled")


class GenerationResponse(Response):
    def __init__(self, state: EngineState, request: GenerationRequest, renderer: Renderer) -> None:
        super().__init__()
        self._state = state
        self._request = request
        self._renderer = renderer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runner = asyncio.create_task(self._serve(send))
        watcher = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((runner, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not runner.done():
                # The client went away (or the server is cancelling us at the end of a drain):
                # cancelling the runner closes the generator's iterator, which frees the slot.
                runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _serve(self, send: Send) -> None:
        state, renderer = self._state, self._renderer
        metrics = state.metrics
        metrics.request_count.inc()
        try:
            state.check_available()
            if state.in_flight >= state.max_in_flight:
                raise ApiError(
                    429,
                    "Model is overloaded: too many requests are queued on this replica.",
                    kind="overloaded",
                    code="model_overloaded",
                    retry_after=1,
                )
        except ApiError as err:
            metrics.observe_failure(err.kind)
            await send_error(send, renderer, err)
            return
        state.in_flight += 1
        state.busy.enter()
        try:
            await self._generate(send)
        finally:
            state.in_flight -= 1
            state.busy.leave()

    async def _generate(self, send: Send) -> None:
        state, renderer = self._state, self._renderer
        metrics = state.metrics
        t0 = time.perf_counter()
        headers_sent = started = False
        it: AsyncIterator[TokenEvent] | None = None
        try:
            it = state.generator.generate(self._request)
            event = await anext(it)
            started = True
            if self._request.adapter_id is not None:
                # Counted once the engine accepted the adapter: an unknown id adds no label.
                metrics.adapter_requests.labels(adapter=self._request.adapter_id).inc()
            first_s = time.perf_counter() - t0
            if renderer.stream:
                headers = [*SSE_HEADERS, (b"x-request-id", self._request.request_id.encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                headers_sent = True
                final = await self._stream(send, it, event)
            else:
                final = await self._complete(send, it, event)
            metrics.observe_success(
                total_s=time.perf_counter() - t0,
                first_token_s=first_s,
                prompt_tokens=final.prompt_tokens,
                generated_tokens=final.generated_tokens,
                adapter=self._request.adapter_id,
            )
        except asyncio.CancelledError:
            metrics.observe_failure("cancelled")
            raise
        except Exception as exc:
            err = self._to_api_error(exc, started)
            metrics.observe_failure(err.kind)
            if headers_sent:
                body = renderer.stream_error(err)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                await send(_END_OF_BODY)
            else:
                await send_error(send, renderer, err)
        finally:
            if it is not None:
                await _close(it)

    def _to_api_error(self, exc: BaseException, started: bool) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, GeneratorError):
            # Before the first token it is the request's fault; after, the engine's.
            if started:
                return ApiError(500, str(exc), kind="generation", code="generation_error")
            return error_from_generator(exc)
        if isinstance(exc, StopAsyncIteration):
            return ApiError(
                500, "The engine ended the sequence without a finish reason.", kind="generation"
            )
        log.exception("generation %s failed", self._request.request_id)
        return ApiError(500, "Internal error in the engine.", kind="internal", code="internal")

    @staticmethod
    def _check_final(event: TokenEvent) -> None:
        if event.finish_reason in _FAILED:
            raise ApiError(
                500,
                f"The engine stopped this sequence ({event.finish_reason}).",
                kind="generation",
                code="generation_error",
            )

    async def _stream(
        self, send: Send, it: AsyncIterator[TokenEvent], event: TokenEvent
    ) -> TokenEvent:
        render = self._renderer.stream_event
        while True:
            if event.finish_reason is not None:
                self._check_final(event)
            chunk = render(event)
            if event.finish_reason is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return event
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            event = await anext(it)

    async def _complete(
        self, send: Send, it: AsyncIterator[TokenEvent], event: TokenEvent
    ) -> TokenEvent:
        texts: list[str] = []
        tokens: list[TokenEvent] = []
        want_tokens = self._renderer.want_tokens
        while True:
            if event.text:
                texts.append(event.text)
            if want_tokens:
                tokens.append(event)
            if event.finish_reason is not None:
                break
            event = await anext(it)
        self._check_final(event)
        body = self._renderer.full_body(Result("".join(texts), event, tokens))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self._request.request_id.encode()),
            (b"x-prompt-tokens", str(event.prompt_tokens).encode()),
            (b"x-generated-tokens", str(event.generated_tokens).encode()),
            (b"x-total-tokens", str(event.prompt_tokens + event.generated_tokens).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return event
