"""One exception hierarchy for the control plane and gateway.

Code inside raises these; only `modelhost.web.errors` turns them into HTTP responses, in the
OpenAI-style shape `{"error": {"message", "type", "param", "code"}}` of the API contract.
"""

from __future__ import annotations


class ModelhostError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidRequest(ModelhostError):
    """Bad inference input (400)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ModelhostError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ModelhostError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class QuotaExceeded(Forbidden):
    code = "gpu_quota_exceeded"


class NotFound(ModelhostError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class Conflict(ModelhostError):
    status_code = 409
    error_type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(ModelhostError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class ValidationFailed(ModelhostError):
    """Invalid control-plane input (422)."""

    status_code = 422
    error_type = "invalid_request_error"
    code = "validation_error"


class QueueFull(ModelhostError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class Unavailable(ModelhostError):
    status_code = 503
    error_type = "server_error"
    code = "unavailable"


class UpstreamTimeout(ModelhostError):
    status_code = 504
    error_type = "server_error"
    code = "engine_timeout"


class UpstreamFailed(ModelhostError):
    """The engine replica failed mid-request (crashed, reset the connection)."""

    status_code = 502
    error_type = "server_error"
    code = "replica_failed"
