"""Exceptions raised by the Python SDK (`modelhost.Client`), and parsing of API error bodies.

The API answers errors as `{"error": {"message", "type", "param", "code"}}` (control plane and
OpenAI routes), `{"error": "...", "error_type": "..."}` (LoRAX routes) or, from a framework
default, `{"detail": ...}`. All of them become a `ModelhostAPIError` so callers handle a single
type; two kinds that callers act on get their own subclasses: `ModelhostSpendingLimitError`
(402, the monthly spending limit is reached) and `ModelhostRateLimitError` (429: a requests- or
tokens-per-minute limit, a full queue, too many failed logins; it carries `retry_after`).
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class ModelhostError(Exception):
    """Base class of every error the SDK raises."""


class ModelhostAPIError(ModelhostError):
    """The server answered with an error.

    `status_code` is the HTTP status. For an error event inside an SSE stream that had already
    begun (the status line said 200), `status_code` is that 200 and `in_stream` is True.
    """

    def __init__(
        self,
        status_code: int,
        code: str | None,
        message: str,
        param: str | None = None,
        *,
        type: str | None = None,
        retry_after: float | None = None,
        in_stream: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.type = type
        self.retry_after = retry_after
        self.in_stream = in_stream

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status_code}{code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"message={self.message!r}, param={self.param!r})"
        )


class ModelhostSpendingLimitError(ModelhostAPIError):
    """402 `spending_limit_reached`: the caller's monthly spending limit is reached (or this
    request's maximum cost would pass it). New requests and deployment starts are refused until
    the month ends or the limit is raised (`Client.set_spending_limit`)."""


class ModelhostRateLimitError(ModelhostAPIError):
    """429: over a requests- or tokens-per-minute limit (`code` "rate_limited"), a full queue
    ("queue_full") or too many failed authentications ("auth_throttled").

    `retry_after` is the server's Retry-After in seconds (None if it sent none). The
    `x-ratelimit-*` headers, when sent, are in `limit_requests`, `remaining_requests`,
    `limit_tokens` and `remaining_tokens` (None when absent).
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None


SPENDING_LIMIT_CODE = "spending_limit_reached"
RATE_LIMIT_CODE = "rate_limited"


def _error_class(status_code: int, code: str | None) -> type[ModelhostAPIError]:
    # By code too: an error event inside a stream that had begun carries the status 200.
    if status_code == 402 or code == SPENDING_LIMIT_CODE:
        return ModelhostSpendingLimitError
    if status_code == 429 or code == RATE_LIMIT_CODE:
        return ModelhostRateLimitError
    return ModelhostAPIError


class ModelhostConnectionError(ModelhostError):
    """The server could not be reached (refused, DNS, TLS, reset, or a transport timeout)."""

    def __init__(self, url: str, detail: str, *, connected: bool = False) -> None:
        where = (
            f"connection to modelhost at {url} failed"
            if connected
            else (f"cannot reach modelhost at {url}")
        )
        super().__init__(f"{where}: {detail}")
        self.url = url
        self.detail = detail


class ModelhostTimeoutError(ModelhostError, TimeoutError):
    """A client-side wait (e.g. `wait_until_settled`) ran out of time."""


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        # An HTTP-date form is legal but no modelhost route sends it.
        return None


def _detail_message(detail: Any) -> tuple[str, str | None]:
    """FastAPI's default validation body: a string, or a list of {loc, msg, type}."""
    if isinstance(detail, str):
        return detail, None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msgs = "; ".join(str(d.get("msg", d)) for d in detail if isinstance(d, dict))
        return msgs, param
    return json.dumps(detail), None


def error_from_payload(
    payload: Any, status_code: int, *, retry_after: float | None = None, in_stream: bool = False
) -> ModelhostAPIError:
    """Build the exception from a decoded error body (any of the shapes in the module doc)."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            param = err.get("param")
            code = err.get("code")
            cls = _error_class(status_code, str(code) if code is not None else None)
            return cls(
                status_code,
                str(code) if code is not None else None,
                str(err.get("message") or "unknown error"),
                str(param) if param is not None else None,
                type=err.get("type"),
                retry_after=retry_after,
                in_stream=in_stream,
            )
        if isinstance(err, str):
            etype = payload.get("error_type")
            cls = _error_class(status_code, str(etype) if etype else None)
            return cls(
                status_code,
                str(etype) if etype else None,
                err,
                type=str(etype) if etype else None,
                retry_after=retry_after,
                in_stream=in_stream,
            )
        if "detail" in payload:
            message, param = _detail_message(payload["detail"])
            return _error_class(status_code, None)(
                status_code, None, message, param, retry_after=retry_after, in_stream=in_stream
            )
    return _error_class(status_code, None)(
        status_code, None, json.dumps(payload)[:500], retry_after=retry_after, in_stream=in_stream
    )


def _int_header(response: httpx.Response, name: str) -> int | None:
    raw = response.headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ModelhostAPIError:
    """Build the exception from a non-2xx response whose body has been read."""
    error = _error_from_body(response)
    if isinstance(error, ModelhostRateLimitError):
        error.limit_requests = _int_header(response, "x-ratelimit-limit-requests")
        error.remaining_requests = _int_header(response, "x-ratelimit-remaining-requests")
        error.limit_tokens = _int_header(response, "x-ratelimit-limit-tokens")
        error.remaining_tokens = _int_header(response, "x-ratelimit-remaining-tokens")
    return error


def _error_from_body(response: httpx.Response) -> ModelhostAPIError:
    retry = _retry_after(response)
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text.strip()
        message = text[:500] if text else response.reason_phrase or "error"
        cls = _error_class(response.status_code, None)
        return cls(response.status_code, None, message, retry_after=retry)
    return error_from_payload(payload, response.status_code, retry_after=retry)
