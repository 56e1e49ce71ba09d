"""The LoRAX surface of an engine: POST /generate, /generate_stream and / (dispatch on
`stream`), with LoRAX's request, response and error shapes (TGI-compatible).

`/` is the route LoRAX's own Python client calls: like LoRAX, it answers a non-streaming
request with a JSON list of one object (the client reads `payload[0]`), and a streaming one
with the same SSE as /generate_stream."""

from __future__ import annotations

import json
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
from modelhost.engine.protocol import ChatMessage, GenerationRequest, SamplingParams, TokenEvent
from modelhost.engine.schemas_lorax import LoraxParameters, LoraxRequest
from modelhost.engine.schemas_openai import MAX_STOP_SEQUENCES


def lorax_error_dict(err: ApiError) -> tuple[int, dict[str, Any]]:
    # LoRAX answers invalid requests with 422, where the OpenAI surface uses 400.
    status = 422 if err.status == 400 else err.status
    return status, {"error": err.message, "error_type": err.kind}


def lorax_error_response(err: ApiError) -> JSONResponse:
    status, body = lorax_error_dict(err)
    headers = {"retry-after": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def _cannot(field: str, why: str) -> ApiError:
    return ApiError(400, f"`{field}` {why}.", code="unsupported_parameter", param=field)


def _check(p: LoraxParameters) -> None:
    if p.adapter_source is not None:
        raise _cannot("adapter_source", "is not supported: adapters are set up per engine")
    if p.merged_adapters is not None:
        raise _cannot("merged_adapters", "is not supported by this engine")
    if p.truncate is not None:
        raise _cannot("truncate", "is not supported by this engine")
    if p.typical_p not in (None, 1.0):
        raise _cannot("typical_p", "is not supported by this engine")
    if p.best_of not in (None, 1):
        raise _cannot("best_of", "must be 1 on this engine")
    if p.watermark:
        raise _cannot("watermark", "is not supported by this engine")
    if p.decoder_input_details:
        raise _cannot("decoder_input_details", "is not supported by this engine")
    if p.return_k_alternatives:
        raise _cannot("return_k_alternatives", "is not supported by this engine")
    if p.response_format is not None:
        raise _cannot("response_format", "is not supported by this engine")
    if p.stop is not None and len(p.stop) > MAX_STOP_SEQUENCES:
        raise ApiError(
            400, f"`stop` may hold at most {MAX_STOP_SEQUENCES} sequences.", param="stop"
        )


def check_lorax_request(body: LoraxRequest) -> None:
    """Every check of a LoRAX request that needs only its body; the gateway runs them too,
    before the request takes a slot."""
    p = body.parameters or LoraxParameters()
    _check(p)
    if p.apply_chat_template:
        _chat_messages(body.inputs)


def _temperature(p: LoraxParameters) -> float:
    """TGI's rule: sampling is on when `do_sample` is, or when any warper is set to a
    non-neutral value; otherwise decoding is greedy (temperature 0)."""
    warpers = (
        (p.temperature is not None and p.temperature != 1.0)
        or p.top_k is not None
        or (p.top_p is not None and p.top_p < 1.0)
    )
    if not (p.do_sample or warpers):
        return 0.0
    return 1.0 if p.temperature is None else p.temperature


def _chat_messages(inputs: str) -> tuple[ChatMessage, ...]:
    """`apply_chat_template`: `inputs` is a JSON list of {role, content} messages, or else
    plain text taken as one user message."""
    try:
        raw = json.loads(inputs)
    except ValueError:
        return (ChatMessage(role="user", content=inputs),)
    if not isinstance(raw, list) or not raw:
        return (ChatMessage(role="user", content=inputs),)
    out: list[ChatMessage] = []
    for m in raw:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
            raise ApiError(400, "`inputs` messages need a string `role`.", param="inputs")
        if not isinstance(m.get("content"), str):
            raise ApiError(400, "`inputs` messages need a string `content`.", param="inputs")
        out.append(ChatMessage(role=m["role"], content=m["content"]))
    return tuple(out)


def to_generation_request(
    state: EngineState, body: LoraxRequest, rid: str, header_adapter: str | None = None
) -> GenerationRequest:
    """`header_adapter` (the gateway's x-adapter-id) wins over `parameters.adapter_id`."""
    p = body.parameters or LoraxParameters()
    _check(p)
    adapter = p.adapter_id if p.adapter_id not in (None, "", state.served_model_name) else None
    adapter = header_adapter or adapter
    params = SamplingParams(
        max_tokens=p.max_new_tokens or 1,
        temperature=_temperature(p),
        top_p=1.0 if p.top_p is None else p.top_p,
        top_k=p.top_k or 0,
        repetition_penalty=p.repetition_penalty or 1.0,
        presence_penalty=p.presence_penalty or 0.0,
        frequency_penalty=p.frequency_penalty or 0.0,
        stop=tuple(p.stop or ()),
        seed=p.seed,
        ignore_eos=bool(p.ignore_eos_token),
    )
    if p.apply_chat_template:
        req = GenerationRequest(
            rid, params, messages=_chat_messages(body.inputs), adapter_id=adapter
        )
    else:
        req = GenerationRequest(rid, params, prompt=body.inputs, adapter_id=adapter)
    if p.max_new_tokens is None:
        req = with_default_max_tokens(state, req)
    return req


def _token_json(event: TokenEvent) -> str:
    logprob = 0.0 if event.logprob is None else event.logprob
    special = "true" if event.special else "false"
    return (
        f'{{"id":{event.token_id},"text":{json.dumps(event.text)},"logprob":{logprob!r},'
        f'"special":{special},"skipped":false}}'
    )


class LoraxRenderer:
    def __init__(self, stream: bool, details: bool, prefix: str, as_list: bool = False) -> None:
        self.stream = stream
        self.want_tokens = details
        self._as_list = as_list  # the compat route `/` wraps the answer in a list
        self._prefix = prefix  # the prompt, when return_full_text
        self._texts: list[str] = [prefix] if prefix else []

    def error_body(self, err: ApiError) -> tuple[int, bytes]:
        status, body = lorax_error_dict(err)
        return status, _json(body).encode()

    def stream_error(self, err: ApiError) -> bytes:
        return b"data:" + _json(lorax_error_dict(err)[1]).encode() + b"\n\n"

    def stream_event(self, event: TokenEvent) -> bytes:
        token = _token_json(event)
        if event.text:
            self._texts.append(event.text)
        if event.finish_reason is None:
            return f'data:{{"token":{token},"generated_text":null,"details":null}}\n\n'.encode()
        details = _json(
            {
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "generated_tokens": event.generated_tokens,
                "seed": event.seed,
            }
        )
        text = _json("".join(self._texts))
        return f'data:{{"token":{token},"generated_text":{text},"details":{details}}}\n\n'.encode()

    def full_body(self, result: Result) -> bytes:
        body = self._full_object(result)
        return b"[" + body + b"]" if self._as_list else body

    def _full_object(self, result: Result) -> bytes:
        final = result.final
        out: dict[str, Any] = {"generated_text": self._prefix + result.text}
        if self.want_tokens:
            tokens = ",".join(_token_json(t) for t in result.tokens)
            details = _json(
                {
                    "finish_reason": final.finish_reason,
                    "prompt_tokens": final.prompt_tokens,
                    "generated_tokens": final.generated_tokens,
                    "skipped_tokens": 0,
                    "seed": final.seed,
                    "prefill": [],
                    "best_of_sequences": None,
                }
            )
            # Splice the pre-rendered token list into the details object.
            return (_json(out)[:-1] + f',"details":{details[:-1]},"tokens":[{tokens}]}}}}').encode()
        return _json(out).encode()


def build_router(state: EngineState) -> APIRouter:
    router = APIRouter()

    async def handle(request: Request, stream: bool | None) -> Response:
        state.check_available()
        body = await parse_body(request, LoraxRequest)
        rid = f"gen-{uuid.uuid4().hex}"
        gen = to_generation_request(state, body, rid, request.headers.get(ADAPTER_HEADER))
        p = body.parameters or LoraxParameters()
        do_stream = bool(body.stream) if stream is None else stream
        prefix = body.inputs if p.return_full_text else ""
        as_list = stream is None and not do_stream
        renderer = LoraxRenderer(do_stream, bool(p.details), prefix, as_list)
        return GenerationResponse(state, gen, renderer)

    @router.post("/generate")
    async def generate(request: Request) -> Response:
        return await handle(request, False)

    @router.post("/generate_stream")
    async def generate_stream(request: Request) -> Response:
        return await handle(request, True)

    @router.post("/")
    async def compat(request: Request) -> Response:
        return await handle(request, None)

    return router
