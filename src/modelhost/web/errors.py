"""The one place exceptions become HTTP error responses (OpenAI-style error JSON)."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from modelhost.errors import ModelhostError

log = logging.getLogger(__name__)

PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def is_lorax_path(path: str) -> bool:
    """LoRAX's per-deployment routes answer errors in LoRAX's shape; the OpenAI routes under the
    same base (`.../v1/...`) in OpenAI's."""
    return path.startswith("/deployments/") and "/v1/" not in path


def _shaped(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """`body` (the OpenAI shape) in the shape the route's clients parse."""
    if not is_lorax_path(request.url.path):
        return body
    error = body["error"]
    return {"error": error["message"], "error_type": error["code"] or error["type"]}


def error_response(exc: ModelhostError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.param, exc.code),
        status_code=exc.status_code,
        headers=headers,
    )


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def _invalid(message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(message, "invalid_request_error", param, "validation_error"), status_code=422
    )


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
    @app.exception_handler(ModelhostError)
    async def _modelhost(_: Request, exc: ModelhostError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        problem = _body_problem(first)
        if problem is not None:
            return _invalid(problem)
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid request"))
        message = f"{param}: {msg}" if param else msg
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return _invalid(message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not decode (nested past Python's recursion
            # limit, not UTF-8, ...): invalid control-plane input, like any other.
            if isinstance(exc.__cause__, RecursionError):
                return _invalid("the request body is not valid JSON: nested too deeply")
            return _invalid("the request body is not valid JSON (UTF-8 encoded)")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return JSONResponse(
            _shaped(request, error_body(str(exc.detail), "invalid_request_error", None, code)),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback for the operator; the client sees no internals.
        log.exception("unhandled error")
        body = error_body("internal server error", "server_error", None, "internal_error")
        return JSONResponse(_shaped(request, body), status_code=500)
