"""Reading a JSON request body into a pydantic model, with an error that names the parameter.

The engine parses bodies itself instead of through FastAPI's parameter machinery: it is faster
(pydantic parses the raw bytes) and it lets every surface answer in its own error shape instead
of FastAPI's 422 list.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from modelhost.engine.http_core import ApiError

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise api_error_from_validation(exc) from None


def _param_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def api_error_from_validation(exc: ValidationError) -> ApiError:
    """The first problem of a body that failed validation, as an OpenAI-style 400."""
    first = exc.errors(include_url=False)[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if first["type"] == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON: {first['msg']}.")
    if first["type"] == "model_type" or not loc:
        return ApiError(400, "The request body must be a JSON object.")
    # A union's branch names (str, list[...]) in the location are pydantic's, not the user's.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TYPE_NAMES)))
    param = _param_path(loc)
    if first["type"] == "extra_forbidden":
        return ApiError(
            400,
            f"Unrecognized request argument supplied: {param}",
            code="unknown_parameter",
            param=param,
        )
    if first["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", code="missing", param=param)
    return ApiError(400, f"Invalid value for '{param}': {first['msg']}.", param=param)


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "ContentPart"})
