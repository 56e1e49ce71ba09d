"""The OpenAI surface of an engine: /v1/chat/completions, /v1/completions, /v1/models.

Requests become `GenerationRequest`s; responses and SSE chunks follow OpenAI's shapes. Stream
chunks are built from prefixes rendered once per request, so the per-token cost is one small
`json.dumps` of the token text.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from modelhost.engine.http_core import (
    ADAPTER_HEADER,
    ApiError,
    EngineState,
    GenerationResponse,
    Result,
    with_default_max_tokens,
)
from modelhost.engine.http_core import compact_json as _json
from modelhost.engine.parsing import parse_body
from modelhost.engine.protocol import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from modelhost.engine.schemas_openai import (
    MAX_STOP_SEQUENCES,
    ChatCompletionRequest,
    CompletionRequest,
)

# Completions keep OpenAI's (and vLLM's) legacy default; chat defaults to the room left in the
# context, capped by EngineState.default_max_tokens.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_OPENAI_FINISH: dict[FinishReason | None, str | None] = {
    "eos_token": "stop",
    "stop_sequence": "stop",
    "length": "length",
    None: None,
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    429: "overloaded_error",
    503: "service_unavailable_error",
}


def openai_error_dict(err: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": _ERROR_TYPES.get(err.status, "server_error"),
            "param": err.param,
            "code": err.code,
        }
    }


def openai_error_response(err: ApiError) -> JSONResponse:
    headers = {"retry-after": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(openai_error_dict(err), status_code=err.status, headers=headers)


def _unsupported(param: str, why: str) -> ApiError:
    return ApiError(
        400,
        f"Unsupported parameter: '{param}' {why}.",
        code="unsupported_parameter",
        param=param,
    )


def _check_common(body: ChatCompletionRequest | CompletionRequest) -> None:
    """Reject known parameters this engine cannot honour at a non-default value."""
    if body.n not in (None, 1):
        raise _unsupported("n", "must be 1: this engine returns one choice per request")
    if body.logit_bias not in (None, {}):
        raise _unsupported("logit_bias", "is not supported by this engine")
    rf = body.response_format
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
        raise _unsupported("response_format", "only {'type': 'text'} is supported")
    if body.stop_token_ids not in (None, []):
        raise _unsupported("stop_token_ids", "is not supported by this engine")
    if body.adapter_source is not None:
        raise _unsupported("adapter_source", "is not supported: adapters are set up per engine")
    if body.min_p not in (None, 0.0):
        raise _unsupported("min_p", "is not supported by this engine")
    if body.store not in (None, False):
        raise _unsupported("store", "is not supported: the engine stores no completions")
    if body.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier", "only 'auto' and 'default' are supported")
    if body.stream_options is not None:
        if not body.stream:
            raise ApiError(
                400,
                "'stream_options' is only allowed when 'stream' is true.",
                param="stream_options",
            )
        if body.stream_options.continuous_usage_stats:
            raise _unsupported("stream_options.continuous_usage_stats", "is not supported")


def _check_chat(body: ChatCompletionRequest) -> None:
    if body.logprobs:
        raise _unsupported("logprobs", "is not supported by this engine")
    if body.top_logprobs:
        raise _unsupported("top_logprobs", "is not supported by this engine")
    if body.tools not in (None, []):
        raise _unsupported("tools", "tool calling is not supported by this engine")
    if body.functions not in (None, []):
        raise _unsupported("functions", "function calling is not supported by this engine")
    # Without tools, "auto" means the same as "none".
    if body.tool_choice not in (None, "none", "auto"):
        raise _unsupported("tool_choice", "tool calling is not supported by this engine")
    if body.function_call not in (None, "none", "auto"):
        raise _unsupported("function_call", "function calling is not supported by this engine")
    if body.reasoning_effort is not None:
        raise _unsupported("reasoning_effort", "is not supported by this engine")
    if body.modalities not in (None, ["text"]):
        raise _unsupported("modalities", "only ['text'] is supported")
    for name in ("audio", "prediction", "web_search_options", "verbosity"):
        if getattr(body, name) is not None:
            raise _unsupported(name, "is not supported by this engine")
    if body.chat_template_kwargs not in (None, {}):
        raise _unsupported("chat_template_kwargs", "is not supported by this engine")


def _messages(body: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    for i, m in enumerate(body.messages):
        where = f"messages[{i}]"
        if m.role in ("tool", "function"):
            raise _unsupported(f"{where}.role", f"'{m.role}' messages need tool calling")
        if m.tool_calls not in (None, []) or m.function_call is not None:
            raise _unsupported(f"{where}.tool_calls", "tool calling is not supported")
        if isinstance(m.content, list):
            texts: list[str] = []
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise _unsupported(
                        f"{where}.content[{j}]", "only text content parts are supported"
                    )
                texts.append(part.text)
            content = "".join(texts)
        elif m.content is None:
            if m.role != "assistant":
                raise ApiError(400, f"'{where}.content' is required.", param=f"{where}.content")
            content = ""
        else:
            content = m.content
        # Chat templates know "system"; "developer" is OpenAI's newer name for it.
        out.append(ChatMessage(role="system" if m.role == "developer" else m.role, content=content))
    return tuple(out)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ApiError(
            400, f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences.", param="stop"
        )
    return stops


def check_chat_request(body: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    """Every check of a chat request that needs only its body; the gateway runs them too,
    before the request takes a slot. Returns the messages."""
    _check_common(body)
    _check_chat(body)
    _stops(body.stop)
    return _messages(body)


def check_completion_request(body: CompletionRequest) -> str:
    """Every check of a completion request that needs only its body (see check_chat_request).
    Returns the prompt."""
    _check_common(body)
    if body.echo:
        raise _unsupported("echo", "is not supported by this engine")
    if body.suffix:
        raise _unsupported("suffix", "is not supported by this engine")
    if body.best_of not in (None, 1):
        raise _unsupported("best_of", "must be 1")
    if body.logprobs:
        raise _unsupported("logprobs", "is not supported by this engine")
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise _unsupported(
                "prompt", "must be one string: batches and token ids are not supported"
            )
        prompt = prompt[0]
    _stops(body.stop)
    return prompt


def _adapter(state: EngineState, model: str, request: Request) -> str | None:
    """The adapter a request names: the gateway's `x-adapter-id` header wins (then `model` is
    the user-facing name, only echoed); else `model`, where "" or the served name is the base."""
    header = request.headers.get(ADAPTER_HEADER)
    if header:
        return header
    return None if model in ("", state.served_model_name) else model


def _params(body: ChatCompletionRequest | CompletionRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k in (None, -1) else int(body.top_k),
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=_stops(body.stop),
        seed=body.seed,
        ignore_eos=bool(body.ignore_eos or body.ignore_eos_token),
    )


def _prefix(rid: str, obj: str, created: int, model: str) -> str:
    head = _json({"id": rid, "object": obj, "created": created, "model": model})
    return "data: " + head[:-1]  # leave the object open for "choices"


def _usage(final: TokenEvent) -> dict[str, int]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.generated_tokens,
        "total_tokens": final.prompt_tokens + final.generated_tokens,
    }


class _OpenAIRenderer:
    """Shared by chat and completions; subclasses say how a text delta is wrapped."""

    want_tokens = False

    def __init__(self, rid: str, created: int, model: str, stream: bool, usage: bool) -> None:
        self.rid, self.created, self.model = rid, created, model
        self.stream = stream
        self.include_usage = usage
        self._usage_null = ',"usage":null' if usage else ""
        self._first = True

    def error_body(self, err: ApiError) -> tuple[int, bytes]:
        return err.status, _json(openai_error_dict(err)).encode()

    def stream_error(self, err: ApiError) -> bytes:
        return b"data: " + _json(openai_error_dict(err)).encode() + b"\n\n"

    def _tail(self, final: TokenEvent, head: str, last_choice: str) -> bytes:
        finish = _json(_OPENAI_FINISH[final.finish_reason])
        out = f'{head},"choices":[{last_choice}"finish_reason":{finish}}}]{self._usage_null}}}\n\n'
        if self.include_usage:
            usage = _json(_usage(final))
            out += f'{head},"choices":[],"usage":{usage}}}\n\n'
        return (out + "data: [DONE]\n\n").encode()


class ChatRenderer(_OpenAIRenderer):
    def __init__(self, rid: str, created: int, model: str, stream: bool, usage: bool) -> None:
        super().__init__(rid, created, model, stream, usage)
        self._head = _prefix(rid, "chat.completion.chunk", created, model)
        choice = ',"choices":[{"index":0,"delta":{'
        self._first_pre = (self._head + choice + '"role":"assistant","content":').encode()
        self._pre = (self._head + choice + '"content":').encode()
        self._post = (
            '},"logprobs":null,"finish_reason":null}]' + self._usage_null + "}\n\n"
        ).encode()

    def stream_event(self, event: TokenEvent) -> bytes:
        out = b""
        if self._first:
            self._first = False
            out = self._first_pre + json.dumps(event.text).encode() + self._post
        elif event.text:
            out = self._pre + json.dumps(event.text).encode() + self._post
        if event.finish_reason is not None:
            out += self._tail(event, self._head, '{"index":0,"delta":{},"logprobs":null,')
        return out

    def full_body(self, result: Result) -> bytes:
        body = {
            "id": self.rid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "logprobs": None,
                    "finish_reason": _OPENAI_FINISH[result.final.finish_reason],
                }
            ],
            "usage": _usage(result.final),
        }
        return _json(body).encode()


class CompletionRenderer(_OpenAIRenderer):
    def __init__(self, rid: str, created: int, model: str, stream: bool, usage: bool) -> None:
        super().__init__(rid, created, model, stream, usage)
        self._head = _prefix(rid, "text_completion", created, model)
        self._pre = (self._head + ',"choices":[{"index":0,"text":').encode()
        self._post = (
            ',"logprobs":null,"finish_reason":null}]' + self._usage_null + "}\n\n"
        ).encode()

    def stream_event(self, event: TokenEvent) -> bytes:
        out = b""
        if event.text:
            out = self._pre + json.dumps(event.text).encode() + self._post
        if event.finish_reason is not None:
            out += self._tail(event, self._head, '{"index":0,"text":"","logprobs":null,')
        return out

    def full_body(self, result: Result) -> bytes:
        body = {
            "id": self.rid,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "text": result.text,
                    "logprobs": None,
                    "finish_reason": _OPENAI_FINISH[result.final.finish_reason],
                }
            ],
            "usage": _usage(result.final),
        }
        return _json(body).encode()


def build_router(state: EngineState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        state.check_available()
        body = await parse_body(request, ChatCompletionRequest)
        messages = check_chat_request(body)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        max_tokens = body.max_completion_tokens or body.max_tokens
        gen = GenerationRequest(
            request_id=rid,
            params=_params(body, max_tokens or 1),
            messages=messages,
            adapter_id=_adapter(state, body.model, request),
        )
        if max_tokens is None:
            gen = with_default_max_tokens(state, gen)
        usage = bool(body.stream_options and body.stream_options.include_usage)
        model = body.model or state.served_model_name
        renderer = ChatRenderer(rid, int(time.time()), model, bool(body.stream), usage)
        return GenerationResponse(state, gen, renderer)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        state.check_available()
        body = await parse_body(request, CompletionRequest)
        prompt = check_completion_request(body)
        rid = f"cmpl-{uuid.uuid4().hex}"
        max_tokens = body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        gen = GenerationRequest(
            request_id=rid,
            params=_params(body, max_tokens),
            prompt=prompt,
            adapter_id=_adapter(state, body.model, request),
        )
        usage = bool(body.stream_options and body.stream_options.include_usage)
        model = body.model or state.served_model_name
        renderer = CompletionRenderer(rid, int(time.time()), model, bool(body.stream), usage)
        return GenerationResponse(state, gen, renderer)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        gen = state.generator
        base = {
            "id": state.served_model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "modelhost",
            "root": gen.model_id,
            "parent": None,
            "max_model_len": gen.context_length,
        }
        # Resident LoRA adapters are models too (vLLM lists them the same way).
        adapters = [
            {**base, "id": a.adapter_id, "root": a.adapter_id, "parent": state.served_model_name}
            for a in gen.stats().adapters
            if a.resident
        ]
        return {"object": "list", "data": [base, *adapters]}

    return router
