"""The OpenAPI document: the bearer scheme, and the error responses each route really gives.

Routes declare their own errors with `responses=errors(...)` (403, 404, 409, 422, ...). What
every documented route shares is added here: each needs a token (401) and may meet the
failed-authentication throttle (429), and each that takes a body may meet the body cap (413).
FastAPI's own 422 schema (`{"detail": [...]}`) is not what this server answers, so it is
dropped; a route that validates its input declares 422 with the error shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every control-plane and OpenAI-route error."""

    error: ErrorDetail


class LoraxErrorResponse(BaseModel):
    """Errors of the LoRAX routes (`/deployments/...`), in LoRAX's shape."""

    error: str
    error_type: str = Field(description="LoRAX's word (`validation`, ...) or our code")


DESCRIPTIONS: dict[int, str] = {
    400: "invalid inference request",
    402: "the spending limit for this month is reached (`spending_limit_reached`)",
    401: "missing, unknown or revoked token (`invalid_api_key`)",
    403: "not allowed for this caller",
    404: "unknown, or another user's private object (`not_found`; the same answer for both)",
    409: "the name is in use (`name_in_use`)",
    413: "request body over `max_body_bytes` (`payload_too_large`)",
    422: "invalid input (`validation_error`), the field in `param`",
    429: "too many failed authentications from this address (`auth_throttled`, `Retry-After`)",
    502: "the replica died while answering (`replica_failed`)",
    503: "stopped or errored deployment, no capacity, cold start or queue wait past its bound, "
    "shutting down (`Retry-After`)",
    504: "the engine did not answer in time (`engine_timeout`)",
}
INFERENCE_NOTES = {
    400: "invalid inference request: not JSON, a bad or unknown parameter, over the context",
    404: "unknown model or adapter, or another user's private one (`model_not_found`)",
    413: "request body over `max_body_bytes` (`payload_too_large`)",
    429: "the deployment's queue is full (`queue_full`), a rate limit (`rate_limited`, with "
    "the x-ratelimit-* headers), or too many failed authentications (`auth_throttled`); all "
    "with `Retry-After`",
    402: "the caller's spending limit for this month is reached, or this request's maximum "
    "cost would pass it (`spending_limit_reached`)",
}


def errors(
    *statuses: int, notes: dict[int, str] | None = None, lorax: bool = False
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error schema (LoRAX's on its routes),
    described by `notes` where the route gives it for a reason of its own."""
    notes = notes or {}
    model = LoraxErrorResponse if lorax else ErrorResponse
    return {
        status: {"model": model, "description": notes.get(status, DESCRIPTIONS[status])}
        for status in statuses
    }


# The inference routes (OpenAI and LoRAX shapes): what the gateway and the engine answer.
OPENAI_INFERENCE = errors(400, 402, 404, 413, 429, 502, 503, 504, notes=INFERENCE_NOTES)
LORAX_INFERENCE = errors(
    402,
    404,
    413,
    422,
    429,
    502,
    503,
    504,
    notes={**INFERENCE_NOTES, 422: "invalid request or a parameter the engine cannot honour"},
    lorax=True,
)


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}


def _decorate(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorDetail, ErrorResponse, LoraxErrorResponse):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (`mh_...`): `Authorization: Bearer <token>`",
        },
        "xi-api-key": {
            "type": "apiKey",
            "in": "header",
            "name": "xi-api-key",
            "description": "The same token in DeepInfra's header",
        },
    }
    # Every documented route needs a token; either header will do.
    spec["security"] = [{"bearer": []}, {"xi-api-key": []}]
    for path, item in spec.get("paths", {}).items():
        # LoRAX's own routes answer in its shape; the per-deployment OpenAI routes in OpenAI's.
        lorax = path.startswith("/deployments/") and "/v1/" not in path
        model = LoraxErrorResponse if lorax else ErrorResponse
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                if "HTTPValidationError" in str(response.get("content", "")):
                    del responses[status]
            shared = [401, 429] + ([413] if "requestBody" in operation else [])
            for status in shared:
                responses.setdefault(
                    str(status), {"description": DESCRIPTIONS[status], "content": _ref(model)}
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in str(spec["paths"]):
            del schemas[unused]
    return spec


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _decorate(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
