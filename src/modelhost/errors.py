"""One exception hierarchy for the control plane and gateway, in terms of what went wrong.

Code inside raises these; each class names its `kind` of failure (not found, conflict, busy,
...) and a stable machine-readable `code`. Nothing here knows HTTP: `modelhost.web.errors`
alone turns a kind into a status and an error shape (OpenAI's, LoRAX's, an SSE event).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class Kind(Enum):
    """What went wrong, as the caller should read it."""

    INTERNAL = "internal"
    INVALID_REQUEST = "invalid_request"  # bad inference input
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"  # not allowed for this caller, quotas included
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    VALIDATION_FAILED = "validation_failed"  # invalid control-plane input
    BUSY = "busy"  # try again later: a full queue, a throttled caller
    PAYMENT_REQUIRED = "payment_required"  # the caller's spending limit is reached
    UNAVAILABLE = "unavailable"  # cannot serve now (stopped, no capacity, shutting down)
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_FAILED = "upstream_failed"


class ServiceError(Exception):
    """The server's base error. `param` names the offending input field, `retry_after` (seconds)
    says when trying again may succeed."""

    kind: ClassVar[Kind] = Kind.INTERNAL
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        # Extra response headers that belong to the answer (the x-ratelimit-* counts).
        self.headers = headers or {}


class InvalidRequest(ServiceError):
    """Bad inference input."""

    kind = Kind.INVALID_REQUEST
    code = "invalid_request"


class Unauthorized(ServiceError):
    kind = Kind.UNAUTHENTICATED
    code = "invalid_api_key"


class Forbidden(ServiceError):
    kind = Kind.FORBIDDEN
    code = "forbidden"


class QuotaExceeded(Forbidden):
    code = "gpu_quota_exceeded"


class NotFound(ServiceError):
    kind = Kind.NOT_FOUND
    code = "not_found"


class Conflict(ServiceError):
    kind = Kind.CONFLICT
    code = "conflict"


class PayloadTooLarge(ServiceError):
    kind = Kind.TOO_LARGE
    code = "payload_too_large"


class ValidationFailed(ServiceError):
    """Invalid control-plane input."""

    kind = Kind.VALIDATION_FAILED
    code = "validation_error"


class QueueFull(ServiceError):
    """A deployment's admission queue is full."""

    kind = Kind.BUSY
    code = "queue_full"


class RateLimited(ServiceError):
    """The caller is over a requests- or tokens-per-minute limit."""

    kind = Kind.BUSY
    code = "rate_limited"


class SpendingLimitReached(ServiceError):
    """The caller's monthly spending limit is reached, or this request's maximum cost would
    pass it."""

    kind = Kind.PAYMENT_REQUIRED
    code = "spending_limit_reached"


class Unavailable(ServiceError):
    kind = Kind.UNAVAILABLE
    code = "unavailable"


class ShuttingDown(Unavailable):
    """The server's shutdown grace period ended this request before it completed."""

    code = "shutting_down"


class UpstreamTimeout(ServiceError):
    kind = Kind.UPSTREAM_TIMEOUT
    code = "engine_timeout"


class UpstreamFailed(ServiceError):
    """The engine replica failed mid-request (crashed, reset the connection)."""

    kind = Kind.UPSTREAM_FAILED
    code = "replica_failed"
