"""LoRAX's own Python client (`lorax-client`, unchanged) against an engine's LoRAX surface, on
a real socket: the simulator engine under uvicorn on 127.0.0.1. The client POSTs to its base
URL (the engine's compat route `/`) and parses every answer with its strict pydantic models,
so a shape the client cannot read fails here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from lorax import AsyncClient, Client
from lorax.errors import GenerationError, NotFoundError, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from modelhost.engine.protocol import Generator
from modelhost.engine.server import create_app
from modelhost.engine.simulator import SimulatorGenerator
from tests.component._live_server import serve_app
from tests.component.scripted import ScriptedGenerator, knobs, one_token_then_fail


def started(generator: Generator, app: ASGIApp) -> ASGIApp:
    """`app` with a lifespan that starts and closes the generator on the server's own loop
    (the engine's process entry point does that outside the app)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await generator.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await generator.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return asgi


@contextmanager
def engine_url(generator: Generator) -> Iterator[str]:
    app = create_app(generator, served_model_name="acme/sim", max_batch_size=4)
    with serve_app(started(generator, app)) as url:
        yield url


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    generator = SimulatorGenerator(knobs(adapters=("ad1",)), model_id="acme/base", max_batch_size=4)
    with engine_url(generator) as base:
        yield base


def test_generate_answers_the_list_the_client_reads(url: str) -> None:
    out = Client(url).generate("hi", max_new_tokens=5)
    assert out.details is not None
    d = out.details
    assert d.finish_reason == "length" and d.generated_tokens == 5 and d.prompt_tokens == 1
    assert d.prefill == [] and len(d.tokens) == 5 and d.seed is None
    assert "".join(t.text for t in d.tokens) == out.generated_text
    # details=False: the object still parses, without details.
    plain = Client(url).generate("hi", max_new_tokens=5, details=False)
    assert plain.generated_text == out.generated_text and plain.details is None


def test_generate_stream_ends_with_text_and_details(url: str) -> None:
    whole = Client(url).generate("hi", max_new_tokens=4, do_sample=True, seed=3)
    events = list(Client(url).generate_stream("hi", max_new_tokens=4, do_sample=True, seed=3))
    assert len(events) == 4
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == whole.generated_text
    assert last.details is not None and last.details.seed == 3
    assert last.details.finish_reason == "length" and last.details.generated_tokens == 4
    assert "".join(e.token.text for e in events) == whole.generated_text


def test_errors_become_the_clients_exceptions(url: str) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        Client(url).generate("hi", adapter_id="nope", max_new_tokens=2)
    assert Client(url).generate("hi", adapter_id="ad1", max_new_tokens=2).generated_text
    with pytest.raises(ValidationError, match="watermark"):
        Client(url).generate("hi", watermark=True)
    with pytest.raises(ValidationError, match="best_of"):
        Client(url).generate("hi", best_of=2, do_sample=True)
    with pytest.raises(ValidationError, match="typical_p"):
        list(Client(url).generate_stream("hi", typical_p=0.5))


async def test_async_client(url: str) -> None:
    client = AsyncClient(url)
    out = await client.generate("hi", max_new_tokens=3, adapter_id="ad1")
    streamed = [e async for e in client.generate_stream("hi", max_new_tokens=3, adapter_id="ad1")]
    assert streamed[-1].generated_text == out.generated_text != ""
    with pytest.raises(NotFoundError, match="nope"):
        await client.generate("hi", adapter_id="nope")


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_stream_failing_midway_raises(use_async: bool) -> None:
    """After the first token the status is already 200: the stream's last event is the error,
    which both clients raise (GenerationError) instead of ending as if complete."""
    seen: list[Any] = []
    failing = engine_url(ScriptedGenerator(one_token_then_fail))
    with failing as url, pytest.raises(GenerationError, match="the GPU fell over"):
        if use_async:
            async for event in AsyncClient(url).generate_stream("x", max_new_tokens=3):
                seen.append(event)
        else:
            seen.extend(Client(url).generate_stream("x", max_new_tokens=3))
    assert [e.token.text for e in seen] == ["partial"]
