"""Token usage read from the engine's answers: whole answers, streams (split anywhere), and
the usage chunk asked for on the client's behalf kept from the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from modelhost.domain.deployment_config import DeploymentConfig, TokenPricing
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.gateway.drain import Drain
from modelhost.gateway.proxy import ForwardResult, Upstream, forward
from modelhost.gateway.upstream import UpstreamClient
from modelhost.gateway.usage_meter import (
    StreamUsage,
    Tokens,
    ask_for_usage,
    from_answer,
    from_headers,
    from_object,
    token_cost,
)
from tests.unit.test_gateway_proxy_faults import Replica, StaysConnected, make_pool


@pytest.mark.parametrize(
    ("path", "body", "added", "after"),
    [
        ("/v1/chat/completions", {"stream": True}, True, {"include_usage": True}),
        (
            "/v1/completions",
            {"stream": True, "stream_options": {"include_usage": False}},
            True,
            {"include_usage": True},
        ),
        (
            "/v1/chat/completions",
            {"stream": True, "stream_options": {"include_usage": True}},
            False,
            {"include_usage": True},
        ),
        ("/v1/chat/completions", {"stream": False}, False, None),
        ("/v1/chat/completions", {}, False, None),
        ("/generate_stream", {"stream": True}, False, None),
        ("/", {"stream": True}, False, None),
    ],
)
def test_ask_for_usage(
    path: str, body: dict[str, Any], added: bool, after: dict[str, Any] | None
) -> None:
    assert ask_for_usage(path, body) is added
    assert body.get("stream_options") == after


@pytest.mark.parametrize(
    ("obj", "tokens"),
    [
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}, Tokens(5, 7)),
        ({"usage": {"completion_tokens": 3}}, Tokens(0, 3)),
        ({"usage": None}, None),
        ({"usage": {"prompt_tokens": "x", "completion_tokens": True}}, None),
        ({"generated_text": "hi", "details": {"generated_tokens": 4}}, Tokens(0, 4)),
        (
            [{"generated_text": "hi", "details": {"prompt_tokens": 2, "generated_tokens": 4}}],
            Tokens(2, 4),
        ),
        ({"generated_text": "hi", "details": None}, None),
        ([], None),
        ("text", None),
    ],
)
def test_from_object(obj: object, tokens: Tokens | None) -> None:
    assert from_object(obj) == tokens


def test_from_answer_prefers_the_engine_headers_then_the_body() -> None:
    body = json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode()
    headers = {"x-prompt-tokens": "10", "x-generated-tokens": "20"}
    assert from_answer(body, headers) == Tokens(10, 20)
    assert from_answer(body, {}) == Tokens(1, 2)
    assert from_answer(b'{"generated_text":"x"}', {"x-generated-tokens": "3"}) == Tokens(0, 3)
    assert from_answer(b'{"generated_text":"x"}', {}) is None
    assert from_answer(b"not json", {}) is None
    assert from_headers({"x-generated-tokens": "abc"}) is None


def _chat_stream(with_usage: bool) -> bytes:
    head = '"id":"c","object":"chat.completion.chunk","created":1,"model":"m"'
    usage_null = ',"usage":null' if with_usage else ""
    events = [
        f'data: {{{head},"choices":[{{"index":0,"delta":{{"content":"Hi"}}}}]{usage_null}}}',
        f'data: {{{head},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]'
        f"{usage_null}}}",
    ]
    if with_usage:
        events.append(
            f'data: {{{head},"choices":[],"usage":{{"prompt_tokens":6,"completion_tokens":2,'
            '"total_tokens":8}}'
        )
    events.append("data: [DONE]")
    return "".join(e + "\n\n" for e in events).encode()


def _feed_in_pieces(meter: StreamUsage, data: bytes, size: int) -> bytes:
    out = b"".join(meter.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + meter.end()


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_stream_the_client_asked_usage_for_passes_through_whole(size: int) -> None:
    data = _chat_stream(with_usage=True)
    meter = StreamUsage(drop_usage_chunk=False)
    assert _feed_in_pieces(meter, data, size) == data
    assert meter.tokens == Tokens(6, 2)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_the_usage_chunk_asked_for_the_client_is_kept_from_it(size: int) -> None:
    data = _chat_stream(with_usage=True)
    meter = StreamUsage(drop_usage_chunk=True)
    out = _feed_in_pieces(meter, data, size)
    assert meter.tokens == Tokens(6, 2)
    assert b'"choices":[]' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"\n\n") == 3  # two chunks and [DONE]


def test_a_lorax_stream_counts_from_its_last_event() -> None:
    events = [
        b'data:{"token":{"id":1,"text":"a"},"generated_text":null,"details":null}\n\n',
        b'data:{"token":{"id":2,"text":"b"},"generated_text":"ab",'
        b'"details":{"finish_reason":"length","prompt_tokens":3,"generated_tokens":2}}\n\n',
    ]
    meter = StreamUsage()
    out = b"".join(meter.feed(e) for e in events) + meter.end()
    assert out == b"".join(events)
    assert meter.tokens == Tokens(3, 2)


def test_a_stream_without_counts_has_none_and_an_unterminated_tail_is_kept() -> None:
    meter = StreamUsage(drop_usage_chunk=True)
    out = meter.feed(b'data: {"choices":[{"delta":{}}]}\n\ndata: {"x":1}')
    out += meter.end()
    assert out == b'data: {"choices":[{"delta":{}}]}\n\ndata: {"x":1}'
    assert meter.tokens is None


# ---- through the proxy: a retried request is metered once ---------------------------------

USAGE_ANSWER = b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}'


async def _usage_replica() -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(USAGE_ANSWER)}\r\n\r\n".encode()
                + USAGE_ANSWER
            )
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_a_request_retried_by_the_proxy_is_metered_once() -> None:
    dying = Replica("close")
    await dying.start()
    server = await _usage_replica()
    port = server.sockets[0].getsockname()[1]
    healthy = ReplicaEndpoint("r2", "dep", f"http://127.0.0.1:{port}", 1, 1)
    pool = make_pool(dying.endpoint("r1"), healthy)
    client = UpstreamClient(30)
    results: list[ForwardResult] = []
    try:
        response = await forward(
            StaysConnected(),  # type: ignore[arg-type]
            client,
            pool,
            Upstream("/v1/completions", b"{}", stream=False),
            "openai",
            30,
            Drain(),
            results.append,
        )
    finally:
        await client.aclose()
        await dying.stop()
        server.close()
    assert response.status_code == 200 and response.headers["x-replica"] == "r2"
    assert dying.requests == 1  # tried there first, then retried
    assert [r.tokens for r in results] == [Tokens(9, 4)]


# ---- what the tokens cost ------------------------------------------------------------------

OWNER, OTHER = 1, 2
# 0.20 USD per 1M prompt tokens, 1.50 per 1M completion tokens.
PRICED = TokenPricing(prompt_micros_per_1m=200_000, completion_micros_per_1m=1_500_000)


@pytest.mark.parametrize(
    ("tokens", "caller", "pricing", "cost"),
    [
        # The owner pays its GPU time, never tokens.
        (Tokens(1_000_000, 1_000_000), OWNER, PRICED, 0),
        # Others pay both prices per 1M tokens.
        (Tokens(1_000_000, 1_000_000), OTHER, PRICED, 1_700_000),
        (Tokens(1_000_000, 0), OTHER, PRICED, 200_000),
        (Tokens(0, 2_000_000), OTHER, PRICED, 3_000_000),
        # Rounded half up once, on the sum: 3 x 0.2 + 5 x 1.5 = 8.1 micros -> 8.
        (Tokens(3, 5), OTHER, PRICED, 8),
        # 2.5 micros -> 3 (half up); 2.499999 -> 2.
        (Tokens(0, 1), OTHER, TokenPricing(0, 2_500_000), 3),
        (Tokens(0, 1), OTHER, TokenPricing(0, 2_499_999), 2),
        # Sub-micro totals round to nothing, but not when added up first: 0.4 + 0.4 -> 1.
        (Tokens(2, 0), OTHER, TokenPricing(200_000, 0), 0),
        (Tokens(2, 2), OTHER, TokenPricing(200_000, 200_000), 1),
        # No pricing, or free: nothing to pay.
        (Tokens(1_000_000, 1_000_000), OTHER, None, 0),
        (Tokens(1_000_000, 1_000_000), OTHER, TokenPricing(0, 0), 0),
        (Tokens(0, 0), OTHER, PRICED, 0),
    ],
)
def test_token_cost(tokens: Tokens, caller: int, pricing: TokenPricing | None, cost: int) -> None:
    assert token_cost(tokens, caller, OWNER, pricing) == cost


def test_token_cost_with_an_unknown_owner_charges_every_caller() -> None:
    assert token_cost(Tokens(1_000_000, 0), OTHER, None, PRICED) == 200_000


def test_pricing_in_the_stored_config_is_optional_and_round_trips() -> None:
    base = {"gpu": "A100-80GB", "num_gpus": 1, "max_batch_size": 8, "engine": "simulator"}
    old = DeploymentConfig.from_json(base)  # a row written before pricing existed
    assert old.pricing is None and "pricing" not in old.to_json()
    assert DeploymentConfig.from_json({**base, "pricing": None}).pricing is None
    priced = DeploymentConfig.from_json({**old.to_json(), "pricing": PRICED.to_json()})
    assert priced.pricing == PRICED
    assert priced.to_json()["pricing"] == {
        "prompt_micros_per_1m": 200_000,
        "completion_micros_per_1m": 1_500_000,
    }
    assert DeploymentConfig.from_json(priced.to_json()) == priced


def test_a_stream_cut_before_its_counts_bills_the_tokens_it_sent() -> None:
    meter = StreamUsage(drop_usage_chunk=True)
    events = b"".join(
        b'data: {"choices": [{"delta": {"content": "w%d"}}]}\n\n' % i for i in range(5)
    )
    meter.feed(events)
    # The client left here: no usage chunk, no [DONE].
    assert meter.tokens is None
    assert meter.billable() == Tokens(0, 5)
    assert StreamUsage().billable() is None


def test_a_complete_stream_bills_the_engines_counts() -> None:
    meter = StreamUsage(drop_usage_chunk=True)
    meter.feed(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n')
    meter.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n')
    meter.feed(b"data: [DONE]\n\n")
    meter.end()
    assert meter.billable() == Tokens(3, 1)
