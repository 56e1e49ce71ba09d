"""Multi-LoRA on the engine's HTTP surface, around the simulator (in-process): adapter
selection (x-adapter-id header, OpenAI `model`, LoRAX `adapter_id`), unknown adapters in each
API's error shape, residency under an LRU, preloading, /v1/models, /v1/adapters, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelhost.engine.server import create_app
from modelhost.engine.simulator import SimulatorGenerator
from modelhost.engine.simulator_timing import SimulatorKnobs

MODEL = "acme/sim"
FAST = SimulatorKnobs(startup_s=0, ttft_ms=0, prefill_ms_per_token=0, tpot_ms=0, adapter_load_ms=5)


def adapter_dir(root: Path, *ids: str) -> Path:
    for adapter_id in ids:
        (root / adapter_id).mkdir(parents=True)
        (root / adapter_id / "adapter_config.json").write_text("{}")
    return root


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[SimulatorGenerator, httpx.AsyncClient]]:
    root = adapter_dir(tmp_path / "adapters", "aaaa1111", "bbbb2222", "cccc3333")
    gen = SimulatorGenerator(
        FAST,
        model_id="acme/base",
        max_batch_size=8,
        adapter_dir=str(root),
        max_active_adapters=2,
        preload_adapters=("cccc3333",),
    )
    await gen.start()
    app = create_app(gen, served_model_name=MODEL, max_batch_size=8)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as c:
        yield gen, c
    await gen.close()


def chat(model: str = MODEL, **kw: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "same prompt"}],
        "max_tokens": 6,
        "temperature": 0,
        **kw,
    }


def lorax(adapter: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"max_new_tokens": 6}
    if adapter is not None:
        params["adapter_id"] = adapter
    return {"inputs": "same prompt", "parameters": params}


async def test_each_adapter_answers_differently_and_the_header_wins(
    sim: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = sim
    base = (await c.post("/v1/chat/completions", json=chat())).json()
    a = (await c.post("/v1/chat/completions", json=chat("aaaa1111"))).json()
    b = (await c.post("/v1/chat/completions", json=chat("bbbb2222"))).json()
    texts = {r["choices"][0]["message"]["content"] for r in (base, a, b)}
    assert len(texts) == 3
    assert a["model"] == "aaaa1111"
    # Through the gateway: model is the user-facing name (echoed), the header names the id.
    r = await c.post(
        "/v1/chat/completions", json=chat("alice/french"), headers={"x-adapter-id": "aaaa1111"}
    )
    assert r.status_code == 200 and r.json()["model"] == "alice/french"
    assert r.json()["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
    # LoRAX: parameters.adapter_id, and the header over it.
    la = (await c.post("/generate", json=lorax("aaaa1111"))).json()["generated_text"]
    lb = (await c.post("/generate", json=lorax("bbbb2222"))).json()["generated_text"]
    lh = await c.post("/generate", json=lorax("ignored"), headers={"x-adapter-id": "bbbb2222"})
    assert la != lb and lh.json()["generated_text"] == lb
    assert (await c.post("/generate", json=lorax(MODEL))).json()["generated_text"] == (
        await c.post("/generate", json=lorax())
    ).json()["generated_text"]


async def test_unknown_adapters_are_404_in_each_apis_shape(
    sim: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    _, c = sim
    for name in ("nope", "../etc", "a/b"):
        r = await c.post("/v1/chat/completions", json=chat(name))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        r = await c.post("/v1/completions", json={"model": name, "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
        r = await c.post("/generate", json=lorax(name))
        assert r.status_code == 404 and r.json()["error_type"] == "not_found"
        r = await c.post("/generate_stream", json=lorax(name))
        assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = await c.post("/generate", json=lorax(), headers={"x-adapter-id": "nope"})
    assert r.status_code == 404


async def test_lru_residency_models_adapters_stats_and_metrics(
    sim: tuple[SimulatorGenerator, httpx.AsyncClient],
) -> None:
    gen, c = sim
    assert (await c.get("/stats")).json()["adapters_resident"] == 1  # the preloaded one
    # Three adapters at once with room for two: one waits for a slot, none fails.
    rs = await asyncio.gather(
        *(
            c.post("/v1/chat/completions", json=chat(name))
            for name in ("aaaa1111", "bbbb2222", "cccc3333", "aaaa1111")
        )
    )
    assert [r.status_code for r in rs] == [200] * 4
    states = {s.adapter_id: s for s in gen.stats().adapters}
    assert sum(s.resident for s in states.values()) == 2
    assert all(s.in_use == 0 for s in states.values())
    assert sum(s.loads for s in states.values()) >= 4  # c was evicted at least once
    models = (await c.get("/v1/models")).json()["data"]
    resident = {s.adapter_id for s in states.values() if s.resident}
    assert {m["id"] for m in models} == {MODEL, *resident}
    assert all(m["parent"] == MODEL for m in models if m["id"] != MODEL)
    listed = (await c.get("/v1/adapters")).json()["data"]
    assert {a["adapter_id"] for a in listed} == set(states)
    assert all(a["load_seconds"] > 0 for a in listed)
    assert (await c.post("/v1/chat/completions", json=chat("nope"))).status_code == 404
    text = (await c.get("/metrics")).text
    assert 'modelhost_engine_adapter_requests_total{adapter="aaaa1111"} 2.0' in text
    assert 'modelhost_engine_adapter_generated_tokens_total{adapter="aaaa1111"} 12.0' in text
    for adapter_id, s in states.items():
        line = f'modelhost_engine_adapter_resident{{adapter="{adapter_id}"}} '
        assert line + ("1.0" if s.resident else "0.0") in text
        assert f'modelhost_engine_adapter_last_load_seconds{{adapter="{adapter_id}"}}' in text
    assert "modelhost_engine_adapters_resident 2.0" in text
    assert "nope" not in text  # unknown ids never become labels


async def test_the_simulator_takes_the_common_adapter_flags(tmp_path: Path) -> None:
    from modelhost.engine.args import parse
    from modelhost.engine.simulator import build_generator

    root = adapter_dir(tmp_path / "adapters", "aaaa1111")
    argv = ["--engine", "simulator", "--port", "1", "--served-model-name", MODEL]
    argv += ["--adapter-dir", str(root), "--max-active-adapters", "3"]
    argv += ["--preload-adapter", "aaaa1111", "--startup-s", "0", "--adapter-load-ms", "1"]
    gen = build_generator(parse(argv))
    await gen.start()
    try:
        (state,) = gen.stats().adapters
        assert state.adapter_id == "aaaa1111" and state.resident and state.loads == 1
        assert gen.knobs.adapter_load_ms == 1
    finally:
        await gen.close()
