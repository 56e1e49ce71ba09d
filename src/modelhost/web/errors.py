"""The one place exceptions become HTTP error answers, for the control plane and the gateway.

A `ServiceError` says what went wrong (its `kind`, `code`, `message`, `param`, `retry_after`);
this module decides how that reads on the wire, in one of two shapes:

- `openai`: `{"error": {"message", "type", "param", "code"}}`, the control plane's and the
  OpenAI-compatible routes' shape;
- `lorax`: `{"error": message, "error_type": word}`, LoRAX's, on its per-deployment routes, with
  LoRAX's own word where it has one so that its client raises the same exception as against
  LoRAX (`validation`, `overloaded`, `incomplete_generation`), our `code` otherwise.

`render` builds a JSON response, `sse_error` the final event of a stream that failed after it
began. `install` routes the framework's own errors (unknown path, wrong method, undecodable or
invalid body, an unexpected exception) and the `ValueError` families the routes may let escape
through the same shapes.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modelhost.domain.autoscaling import SettingsError
from modelhost.errors import (
    Kind,
    QueueFull,
    ServiceError,
    ShuttingDown,
    UpstreamFailed,
    ValidationFailed,
)

log = logging.getLogger(__name__)

Shape = Literal["openai", "lorax"]

PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Each kind of failure as HTTP: the status and the OpenAI error `type`.
HTTP: dict[Kind, tuple[int, str]] = {
    Kind.INTERNAL: (500, "server_error"),
    Kind.INVALID_REQUEST: (400, "invalid_request_error"),
    Kind.UNAUTHENTICATED: (401, "authentication_error"),
    Kind.FORBIDDEN: (403, "permission_error"),
    Kind.NOT_FOUND: (404, "not_found_error"),
    Kind.CONFLICT: (409, "conflict_error"),
    Kind.TOO_LARGE: (413, "invalid_request_error"),
    Kind.VALIDATION_FAILED: (422, "invalid_request_error"),
    Kind.BUSY: (429, "rate_limit_error"),
    Kind.PAYMENT_REQUIRED: (402, "insufficient_quota"),
    Kind.UNAVAILABLE: (503, "server_error"),
    Kind.UPSTREAM_TIMEOUT: (504, "server_error"),
    Kind.UPSTREAM_FAILED: (502, "server_error"),
}

# LoRAX's words (its client maps each to an exception class of its own).
LORAX_VALIDATION = "validation"  # ValidationError; LoRAX answers invalid input with 422
LORAX_OVERLOADED = "overloaded"  # OverloadedError
LORAX_INCOMPLETE = "incomplete_generation"  # IncompleteGenerationError, a stream cut short
LORAX_STREAM_FALLBACK = "error"


def status_of(exc: ServiceError) -> int:
    """The HTTP status of `exc` in the OpenAI shape (the control plane's)."""
    return HTTP[exc.kind][0]


def openai_type(exc: ServiceError) -> str:
    return HTTP[exc.kind][1]


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def lorax_body(message: str, error_type: str) -> dict[str, Any]:
    """LoRAX's error shape."""
    return {"error": message, "error_type": error_type}


def shape_for_path(path: str) -> Shape:
    """LoRAX's per-deployment routes (`/deployments/<user>/<model>...`) answer in LoRAX's shape,
    but for the OpenAI routes under the same base (`.../v1/...`); every other route in OpenAI's."""
    if path.startswith("/deployments/") and path.split("/")[4:5] != ["v1"]:
        return "lorax"
    return "openai"


def as_service_error(exc: BaseException) -> ServiceError | None:
    """`exc` as the hierarchy's error, for the families raised below the web layer that cannot
    join the hierarchy (the domain imports nothing of the project); None for anything else."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, SettingsError):
        # Autoscaling settings arrive as the `settings` object of the deployment routes.
        field = f"settings.{exc.field}"
        return ValidationFailed(f"{field}: {exc.message}", param=field)
    return None


def _retry_after(exc: ServiceError) -> dict[str, str]:
    if exc.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}


def _lorax_status_and_word(exc: ServiceError) -> tuple[int, str]:
    status, type_ = HTTP[exc.kind]
    if exc.kind is Kind.INVALID_REQUEST:
        # Like the engine's own answer to invalid input: 422 `validation`.
        return 422, LORAX_VALIDATION
    if isinstance(exc, QueueFull):
        return status, LORAX_OVERLOADED
    # Otherwise our code; LoRAX's client picks its exception by status (404: NotFoundError).
    return status, exc.code or type_


def payload(exc: ServiceError, shape: Shape = "openai") -> tuple[int, dict[str, Any]]:
    """The status and JSON body `exc` answers with in `shape`."""
    if shape == "lorax":
        status, word = _lorax_status_and_word(exc)
        return status, lorax_body(exc.message, word)
    status, type_ = HTTP[exc.kind]
    return status, error_body(exc.message, type_, exc.param, exc.code)


def render(exc: ServiceError, shape: Shape = "openai") -> JSONResponse:
    """`exc` as a JSON response in `shape`, with `Retry-After` where it says when to retry."""
    status, body = payload(exc, shape)
    return JSONResponse(body, status_code=status, headers={**exc.headers, **_retry_after(exc)})


def render_for_path(path: str, exc: ServiceError) -> JSONResponse:
    """`exc` in the shape of the route at `path` (for code that sees no route, middlewares)."""
    return render(exc, shape_for_path(path))


def sse_payload(exc: ServiceError, shape: Shape) -> dict[str, Any]:
    """The final event of a stream that failed after it began. For LoRAX a stream cut short (the
    replica died, the server's shutdown grace period ended) is `incomplete_generation`, so its
    client raises IncompleteGenerationError."""
    if shape == "lorax":
        cut = isinstance(exc, UpstreamFailed | ShuttingDown)
        word = LORAX_INCOMPLETE if cut else exc.code
        return lorax_body(exc.message, word or LORAX_STREAM_FALLBACK)
    return error_body(exc.message, openai_type(exc), exc.param, exc.code)


def sse_error(exc: ServiceError, shape: Shape) -> bytes:
    """`sse_payload` as the bytes of one SSE event."""
    return f"data: {json.dumps(sse_payload(exc, shape))}\n\n".encode()


# ---- the framework's own errors -----------------------------------------------------------


def _framework(
    shape: Shape,
    status: int,
    message: str,
    code: str,
    *,
    param: str | None = None,
    type_: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error the framework (not a ServiceError) detected, in `shape`."""
    body = (
        lorax_body(message, code) if shape == "lorax" else error_body(message, type_, param, code)
    )
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def _invalid(request: Request, message: str, param: str | None = None) -> JSONResponse:
    return render(ValidationFailed(message, param=param), shape_for_path(request.url.path))


def _body_problem(first: dict[str, Any]) -> str | None:
    """A message for a body that is not a JSON object at all (instead of pydantic's words)."""
    loc = tuple(first.get("loc", ()))
    kind = first.get("type")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"the request body is not valid JSON: {reason}{where}"
    if loc == ("body",) and kind == "missing":
        return "a JSON object body is required (Content-Type: application/json)"
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object (Content-Type: application/json)"
    return None


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's own 405 names only those of the
    first route that matched the path. Each method is tried against the app's routes (included
    routers answer for all of theirs)."""
    allowed = []
    for method in PROBED_METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return render_for_path(request.url.path, exc)

    @app.exception_handler(SettingsError)
    async def _settings(request: Request, exc: SettingsError) -> JSONResponse:
        mapped = as_service_error(exc)
        assert mapped is not None
        return render_for_path(request.url.path, mapped)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        problem = _body_problem(first)
        if problem is not None:
            return _invalid(request, problem)
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid request"))
        message = f"{param}: {msg}" if param else msg
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return _invalid(request, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not decode (nested past Python's recursion
            # limit, not UTF-8, ...): invalid control-plane input, like any other.
            if isinstance(exc.__cause__, RecursionError):
                return _invalid(request, "the request body is not valid JSON: nested too deeply")
            return _invalid(request, "the request body is not valid JSON (UTF-8 encoded)")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        shape = shape_for_path(request.url.path)
        return _framework(shape, exc.status_code, str(exc.detail), code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback for the operator; the client sees no internals.
        log.exception("unhandled error")
        shape = shape_for_path(request.url.path)
        return render(ServiceError("internal server error"), shape)
