"""The engine HTTP server around the simulator, in-process (httpx ASGI transport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelhost.engine.protocol import (
    GenerationRequest,
    TokenEvent,
)
from modelhost.engine.server import create_app
from modelhost.engine.simulator import SimulatorGenerator
from modelhost.engine.simulator_timing import SimulatorKnobs
from tests.component.scripted import ScriptedGenerator, knobs, one_token_then_fail

MODEL = "acme/sim"


async def make(
    k: SimulatorKnobs | None = None, *, batch: int = 4, start: bool = True, **app_kw: Any
) -> tuple[SimulatorGenerator, FastAPI]:
    gen = SimulatorGenerator(k or knobs(), model_id="acme/base", max_batch_size=batch)
    if start:
        await gen.start()
    return gen, create_app(gen, served_model_name=MODEL, max_batch_size=batch, **app_kw)


def client(app: FastAPI, raise_errors: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
    return httpx.AsyncClient(transport=transport, base_url="http://engine")


@pytest.fixture
async def engine() -> AsyncIterator[tuple[SimulatorGenerator, httpx.AsyncClient]]:
    gen, app = await make(knobs(adapters=("ad/1",)))
    async with client(app) as c:
        yield gen, c
    await gen.close()


def sse(body: str, prefix: str = "data: ") -> list[Any]:
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith(prefix.strip()) for e in events), body
    return [e[len(prefix.strip()) :].strip() for e in events]


def chat(content: str = "hello there", **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}


# --- health, info, stats, models ----------------------------------------------------------


async def test_health_is_503_until_the_generator_has_started() -> None:
    gen, app = await make(knobs(), start=False)
    async with client(app) as c:
        r = await c.get("/health")
        assert r.status_code == 503
        assert r.json() == {"error": "unhealthy", "error_type": "healthcheck"}
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "engine_not_ready"
        await gen.start()
        r = await c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    await gen.close()


async def test_info_stats_models(engine: tuple[SimulatorGenerator, httpx.AsyncClient]) -> None:
    _, c = engine
    info = (await c.get("/info")).json()
    assert info["model_id"] == "acme/base" and info["max_concurrent_requests"] == 4
    assert info["max_total_tokens"] == 4096 and info["max_input_length"] == 4095
    stats = (await c.get("/stats")).json()
    # The busy clock (seconds with a request in flight, seconds up): idle so far.
    assert stats.pop("busy_s") == 0.0 and stats.pop("uptime_s") >= 0.0
    assert stats == {"running": 0, "waiting": 0, "max_batch_size": 4, "adapters_resident": 0}
    assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
    after = (await c.get("/stats")).json()
    assert 0.0 < after["busy_s"] <= after["uptime_s"]
    models = (await c.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [
        (MODEL, "model", 4096)
    ]


# --- OpenAI ---------------------------------------------------------------------------------


async def test_chat_completion_shape(engine: tuple[SimulatorGenerator, httpx.AsyncClient]) -> None:
    _, c = engine
    r = await c.post("/v1/chat/completions", json=chat(max_tokens=6, user="u1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 6 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert r.headers["x-generated-tokens"] == "6"
    assert r.headers["x-prompt-tokens"] == str(usage["prompt_tokens"])


async def test_chat_stream_matches_non_stream_and_reports_usage(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    whole = (await c.post("/v1/chat/completions", json=chat(max_tokens=7))).json()
    r = await c.post(
        "/v1/chat/completions",
        json=chat(max_tokens=7, stream=True, stream_options={"include_usage": True}),
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks[:-1])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(ch["usage"] is None for ch in chunks[:-1])


async def test_stop_sequences_map_to_stop(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    full = await c.post("/v1/completions", json={"model": MODEL, "prompt": "p", "max_tokens": 30})
    text = full.json()["choices"][0]["text"]
    stop = text.split(" ")[4]
    assert stop
    r = await c.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "p", "max_tokens": 30, "stop": [stop], "stream": True},
    )
    events = sse(r.text)
    chunks = [json.loads(e) for e in events[:-1]]
    out = "".join(ch["choices"][0]["text"] for ch in chunks)
    assert out == text[: text.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(ch["object"] == "text_completion" and ch["id"].startswith("cmpl-") for ch in chunks)


async def test_completion_shape_and_legacy_default_max_tokens(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    r = await c.post("/v1/completions", json={"model": MODEL, "prompt": ["once upon"]})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"


async def test_chat_default_max_tokens_is_the_room_left_capped() -> None:
    gen, app = await make(knobs(context_length=40))
    async with client(app) as c:
        body = (await c.post("/v1/chat/completions", json=chat("a b c"))).json()
        assert body["usage"]["total_tokens"] == 40
        r = await c.post("/v1/chat/completions", json=chat("a b c", max_completion_tokens=3))
        assert r.json()["usage"]["completion_tokens"] == 3
    await gen.close()
    gen, app = await make(knobs(context_length=40), default_max_tokens=5)
    async with client(app) as c:
        body = (await c.post("/v1/chat/completions", json=chat("a b c"))).json()
        assert body["usage"]["completion_tokens"] == 5
    await gen.close()


async def test_model_selects_base_or_adapter(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    texts = {}
    for model in (MODEL, "", "ad/1"):
        r = await c.post("/v1/chat/completions", json={**chat(max_tokens=8), "model": model})
        assert r.status_code == 200, r.text
        texts[model] = r.json()["choices"][0]["message"]["content"]
    assert texts[MODEL] == texts[""] != texts["ad/1"]
    r = await c.post("/v1/chat/completions", json={**chat(), "model": "who/else"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"n": 2}, "n"),
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"logit_bias": {"1": 5}}, "logit_bias"),
        ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("/v1/chat/completions", {"min_p": 0.1}, "min_p"),
        ("/v1/chat/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"suffix": "end"}, "suffix"),
        ("/v1/completions", {"logprobs": 2}, "logprobs"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, "prompt"),
    ],
)
async def test_unsupported_parameters_are_400_naming_them(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
    path: str,
    extra: dict[str, Any],
    param: str,
) -> None:
    _, c = engine
    base = chat() if "chat" in path else {"model": MODEL, "prompt": "hi"}
    r = await c.post(path, json={**base, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert err["code"] in ("unsupported_parameter", None)
    assert "Traceback" not in r.text


async def test_defaults_of_unsupported_parameters_are_accepted(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    body = chat(
        max_tokens=2,
        n=1,
        logprobs=False,
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        logit_bias={},
        parallel_tool_calls=True,
        seed=3,
        temperature=0,
        top_p=0.5,
        top_k=-1,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        stop="\n\n",
        user="someone",
        store=False,
        service_tier="auto",
        stream=False,
    )
    r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**chat(), "foo": 1}, "foo", "unknown_parameter"),
        ({"model": MODEL}, "messages", "missing"),
        (chat(temperature=5), "temperature", None),
        (chat(max_tokens=0), "max_tokens", None),
        (chat(stop=[str(i) for i in range(17)]), "stop", None),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x", "extra": 1}]},
            "messages[0].extra",
            "unknown_parameter",
        ),
        (
            {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            None,
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ],
            },
            "messages[0].content[0]",
            "unsupported_parameter",
        ),
        (
            {"model": MODEL, "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
            "messages[0].role",
            "unsupported_parameter",
        ),
    ],
)
async def test_validation_errors_are_openai_shaped_400(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
    body: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    _, c = engine
    r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code)
    assert err["type"] == "invalid_request_error" and err["message"]


async def test_text_content_parts_are_joined(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": " there"}]
    a = await c.post("/v1/chat/completions", json=chat(parts, max_tokens=5))  # type: ignore[arg-type]
    b = await c.post("/v1/chat/completions", json=chat("hello there", max_tokens=5))
    assert a.status_code == 200, a.text
    assert a.json()["choices"] == b.json()["choices"]


async def test_bad_json_and_non_object_bodies(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    r = await c.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = await c.post("/v1/completions", json=[1, 2])
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_context_length_exceeded() -> None:
    gen, app = await make(knobs(context_length=20))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("w " * 30))
        assert r.status_code == 400
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
            "context_length_exceeded",
            "messages",
        )
        r = await c.post("/v1/chat/completions", json=chat("w", max_tokens=50, stream=True))
        assert r.status_code == 400  # rejected before the stream starts
        assert r.json()["error"]["param"] == "max_tokens"
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "w " * 30})
        assert r.json()["error"]["param"] == "prompt"
        r = await c.post("/generate", json={"inputs": "w " * 30})
        assert r.status_code == 422 and r.json()["error_type"] == "validation"
    await gen.close()


async def test_unknown_route_is_a_json_error(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    r = await c.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


# --- LoRAX ---------------------------------------------------------------------------------

# What LoRAX's Python client sends when the caller sets nothing.
LORAX_CLIENT_DEFAULTS: dict[str, Any] = {
    "adapter_id": None,
    "adapter_source": None,
    "merged_adapters": None,
    "api_token": None,
    "do_sample": False,
    "max_new_tokens": 5,
    "ignore_eos_token": False,
    "repetition_penalty": None,
    "return_full_text": False,
    "stop": [],
    "seed": None,
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "truncate": None,
    "typical_p": None,
    "best_of": None,
    "watermark": False,
    "details": True,
    "decoder_input_details": False,
    "return_k_alternatives": None,
    "response_format": None,
}


async def test_lorax_generate_with_details(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    r = await c.post("/generate", json={"inputs": "hi", "parameters": LORAX_CLIENT_DEFAULTS})
    assert r.status_code == 200, r.text
    body = r.json()
    d = body["details"]
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 5
    assert d["prompt_tokens"] == 1 and d["seed"] is None  # greedy: no sampling seed
    assert d["prefill"] == [] and d["skipped_tokens"] == 0
    assert len(d["tokens"]) == 5
    assert all(set(t) == {"id", "text", "logprob", "special", "skipped"} for t in d["tokens"])
    assert "".join(t["text"] for t in d["tokens"]) == body["generated_text"]
    plain = await c.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 5}})
    assert plain.json() == {"generated_text": body["generated_text"]}


async def test_lorax_stream_and_dispatch(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    req = {"inputs": "hi", "parameters": {"max_new_tokens": 4, "do_sample": True, "seed": 5}}
    whole = (await c.post("/generate", json=req)).json()
    r = await c.post("/generate_stream", json=req)
    events = [json.loads(e) for e in sse(r.text, "data:")]
    assert len(events) == 4
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == whole["generated_text"]
    assert events[-1]["details"] == {
        "finish_reason": "length",
        "prompt_tokens": 1,
        "generated_tokens": 4,
        "seed": 5,
    }
    streamed = await c.post("/", json={**req, "stream": True})
    assert sse(streamed.text, "data:") == sse(r.text, "data:")
    plain = await c.post("/", json=req)
    # LoRAX's compat route answers a list of one object (its client reads payload[0]).
    assert plain.json() == [whole]


async def test_lorax_return_full_text_and_stop(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    base = await c.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 20}})
    text = base.json()["generated_text"]
    stop = text.split(" ")[3]
    r = await c.post(
        "/generate",
        json={
            "inputs": "hi",
            "parameters": {
                "max_new_tokens": 20,
                "stop": [stop],
                "return_full_text": True,
                "details": True,
            },
        },
    )
    body = r.json()
    assert body["generated_text"] == "hi" + text[: text.index(stop)]
    assert body["details"]["finish_reason"] == "stop_sequence"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("typical_p", 0.5),
        ("watermark", True),
        ("truncate", 10),
        ("best_of", 2),
        ("decoder_input_details", True),
        ("return_k_alternatives", 2),
        ("response_format", {"type": "json_object"}),
        ("adapter_source", "s3"),
        ("merged_adapters", {"ids": ["a"], "weights": [1.0], "density": 0.5}),
        ("no_such_field", 1),
        ("temperature", -1),
    ],
)
async def test_lorax_rejects_what_it_cannot_honour(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient], field: str, value: Any
) -> None:
    _, c = engine
    r = await c.post("/generate", json={"inputs": "hi", "parameters": {field: value}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "validation"
    assert field in body["error"]


async def test_lorax_unknown_adapter_and_adapter_id(
    engine: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = engine
    r = await c.post("/generate", json={"inputs": "hi", "parameters": {"adapter_id": "nope"}})
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = await c.post("/generate", json={"inputs": "hi", "parameters": {"adapter_id": "ad/1"}})
    assert r.status_code == 200


# --- overload, errors mid-stream, disconnects, metrics --------------------------------------


async def test_overload_is_429_when_the_queue_is_full() -> None:
    gen, app = await make(knobs(tpot_ms=60_000), batch=1, max_waiting=1)
    state = app.state.engine
    async with client(app) as c:
        long = [
            asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 9}))
            for _ in range(2)
        ]
        while state.in_flight < 2:
            await asyncio.sleep(0)
        r = await c.post("/generate", json={"inputs": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error_type"] == "overloaded"
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "model_overloaded"
        for t in long:
            t.cancel()
        await asyncio.gather(*long, return_exceptions=True)
    await gen.close()


async def test_an_error_after_the_stream_began_is_a_final_error_event() -> None:
    app = create_app(
        ScriptedGenerator(one_token_then_fail), served_model_name="m", max_batch_size=1
    )
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json={**chat(max_tokens=3), "stream": True})
        events = sse(r.text)
        assert "[DONE]" not in events
        last = json.loads(events[-1])
        assert last["error"]["message"] == "the GPU fell over"
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "partial"
        r = await c.post("/generate_stream", json={"inputs": "x"})
        last = json.loads(sse(r.text, "data:")[-1])
        assert last == {"error": "the GPU fell over", "error_type": "generation"}
        # Non-streaming: nothing was sent yet, so a plain 500 error.
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


async def test_unexpected_exceptions_never_leak_a_traceback() -> None:
    async def crash(request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        raise ValueError("internal detail /secret/path")
        yield  # pragma: no cover

    gen = ScriptedGenerator(crash)
    app = create_app(gen, served_model_name="m", max_batch_size=1)
    async with client(app, raise_errors=False) as c:
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 500 and "secret" not in r.text
        assert r.json()["error"]["code"] == "internal"
        gen.count_fails = True  # now the endpoint itself raises, before any response
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["error"]["type"] == "server_error"
        r = await c.post("/generate", json={"inputs": "x"})
        assert r.status_code == 500 and set(r.json()) == {"error", "error_type"}


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5),
        "server": ("e", 80),
        "headers": [(b"content-type", b"application/json"), (b"host", b"e")],
    }


class RawCall:
    """Drives the ASGI app by hand so a test can disconnect the client at a chosen moment."""

    def __init__(self, app: FastAPI, path: str, body: dict[str, Any]) -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.first_body = asyncio.Event()
        self._gone = asyncio.Event()
        self._body = json.dumps(body).encode()
        self._asked = False
        self.task = asyncio.ensure_future(app(_scope(path), self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_body.set()

    async def disconnect(self) -> None:
        self._gone.set()
        await self.task


async def test_client_disconnect_cancels_streaming_and_queued_sequences() -> None:
    gen, app = await make(knobs(tpot_ms=5), batch=1)
    streaming = RawCall(app, "/v1/chat/completions", chat(max_tokens=4000, stream=True))
    await streaming.first_body.wait()
    queued = RawCall(app, "/generate_stream", {"inputs": "x", "parameters": {"max_new_tokens": 9}})
    while gen.stats().waiting < 1:
        await asyncio.sleep(0)
    assert (gen.stats().running, gen.stats().waiting) == (1, 1)
    await queued.disconnect()  # gone while waiting for a batch slot: no headers were sent
    assert queued.sent == []
    assert (gen.stats().running, gen.stats().waiting) == (1, 0)
    await streaming.disconnect()
    assert (gen.stats().running, gen.stats().waiting) == (0, 0)
    assert app.state.engine.in_flight == 0
    metrics = app.state.engine.metrics.render().decode()
    assert 'lorax_request_failure_total{err="cancelled"} 2.0' in metrics
    await gen.close()


async def test_non_streaming_request_is_cancelled_on_disconnect_too() -> None:
    gen, app = await make(knobs(tpot_ms=5), batch=2)
    call = RawCall(app, "/v1/completions", {"prompt": "x", "max_tokens": 4000})
    while gen.stats().running < 1:
        await asyncio.sleep(0)
    await call.disconnect()
    assert gen.stats().running == 0 and call.sent == []
    await gen.close()


async def test_metrics_exposition(engine: tuple[SimulatorGenerator, httpx.AsyncClient]) -> None:
    _, c = engine
    await c.post("/v1/chat/completions", json=chat(max_tokens=3))
    await c.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    await c.post("/v1/chat/completions", json=chat(n=3))
    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in (
        "lorax_request_count_total 3.0",
        "lorax_request_success_total 2.0",
        'lorax_request_failure_total{err="validation"} 1.0',
        "lorax_request_generated_tokens_sum 5.0",
        "lorax_request_duration_count 2.0",
        "lorax_request_queue_duration_count 2.0",
        "lorax_request_input_length_count 2.0",
        "modelhost_engine_running 0.0",
        "modelhost_engine_waiting 0.0",
        "lorax_batch_current_size 0.0",
        "lorax_queue_length 0.0",
    ):
        assert line in text, line
