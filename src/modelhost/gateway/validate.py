"""Inference request bodies checked at the gateway, before a request takes a replica slot or
starts a replica: the engine's own pydantic models and checks, so the rules are written once
and the answers (status, message, `param`, `code`) are the ones the engine would give.

What needs the model (the prompt's length in tokens against the context) stays in the engine.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from modelhost.engine.http_core import ApiError
from modelhost.engine.lorax_api import check_lorax_request
from modelhost.engine.openai_api import check_chat_request, check_completion_request
from modelhost.engine.parsing import api_error_from_validation
from modelhost.engine.schemas_lorax import LoraxRequest
from modelhost.engine.schemas_openai import ChatCompletionRequest, CompletionRequest
from modelhost.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def _invalid(err: ApiError) -> InvalidRequest:
    exc = InvalidRequest(err.message, param=err.param)
    # The engine's code, null where it gives none (InvalidRequest narrows `code` to str).
    exc.code = err.code  # type: ignore[assignment]
    return exc


def _parse(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(api_error_from_validation(exc)) from None


def check_inference(path: str, body: dict[str, Any]) -> bool:
    """Raise InvalidRequest for a body the engine would refuse at `path` (an engine route);
    otherwise return whether the request streams."""
    try:
        if path.endswith("/chat/completions"):
            chat = _parse(ChatCompletionRequest, body)
            check_chat_request(chat)
            return bool(chat.stream)
        if path.endswith("/completions"):
            completion = _parse(CompletionRequest, body)
            check_completion_request(completion)
            return bool(completion.stream)
        lorax = _parse(LoraxRequest, body)
        check_lorax_request(lorax)
        return path.endswith("generate_stream") or (path == "/" and bool(lorax.stream))
    except ApiError as err:
        raise _invalid(err) from None
