"""End to end: a real `modelhost serve` with real simulator replica processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess, auth, wait_until
from tests.e2e.deployments import alive, create, get, replica_pids, wait_status

pytestmark = pytest.mark.e2e


def test_create_stream_update_delete(serve: ServeProcess) -> None:
    dep = create(serve, "chat")
    assert dep["status"] == "pending"
    dep = wait_status(serve, dep["deploy_id"], "ready")
    assert dep["instances"] == {"running": 1, "pending": 0}

    client = openai.OpenAI(base_url=serve.url + "/v1/openai", api_key=ADMIN_TOKEN)
    stream = client.chat.completions.create(
        model="admin/chat",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    # By deploy id, non-streaming, and the plain /v1 prefix.
    client2 = openai.OpenAI(base_url=serve.url + "/v1", api_key=ADMIN_TOKEN)
    out = client2.completions.create(
        model=f"deploy_id:{dep['deploy_id']}", prompt="x", max_tokens=3
    )
    assert out.usage is not None and out.usage.completion_tokens == 3
    assert "admin/chat" in [m.id for m in client.models.list()]

    r = serve.client.put(f"/deploy/{dep['deploy_id']}", json={"settings": {"max_instances": 2}})
    assert r.status_code == 200 and r.json()["settings"]["max_instances"] == 2
    assert get(serve, dep["deploy_id"])["status"] == "ready"

    pids = replica_pids(serve)
    assert pids and all(alive(p) for p in pids)
    assert serve.client.delete(f"/deploy/{dep['deploy_id']}").json() == {
        "deploy_id": dep["deploy_id"]
    }
    wait_until(lambda: not any(alive(p) for p in pids), timeout=30, what="replicas to stop")
    assert serve.client.get(f"/deploy/{dep['deploy_id']}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="admin/chat", prompt="x", max_tokens=1)
    # The server's own INFO lines are logged, the replicas' health and stats probes are not.
    log = serve.log_path.read_text()
    assert "is ready on port" in log
    assert "HTTP Request:" not in log, [line for line in log.splitlines() if "HTTP Req" in line][:3]


def test_killed_replica_is_replaced_and_in_flight_request_fails_cleanly(
    serve: ServeProcess,
) -> None:
    dep = create(serve, "chaos")
    wait_status(serve, dep["deploy_id"], "ready")
    [pid] = replica_pids(serve)
    body = {
        "model": "admin/chaos",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 400,
        "stream": True,
    }
    lines: list[str] = []
    started = threading.Event()

    def consume() -> None:
        with httpx.stream(
            "POST",
            serve.url + "/v1/openai/chat/completions",
            json=body,
            headers=auth(ADMIN_TOKEN),
            timeout=60,
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(30)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    # The stream ends with an error event, never with [DONE] as if it had succeeded.
    assert lines[-1] != "data: [DONE]"
    assert '"error"' in lines[-1]
    # A new replica replaces it and serves.
    wait_until(
        lambda: (p := replica_pids(serve)) and pid not in p, timeout=60, what="a replacement"
    )
    wait_status(serve, dep["deploy_id"], "ready")
    r = serve.client.post(
        "/v1/openai/completions", json={"model": "admin/chaos", "prompt": "x", "max_tokens": 2}
    )
    assert r.status_code == 200, r.text
    kinds = [
        e["kind"] for e in serve.client.get(f"/deploy/{dep['deploy_id']}/events").json()["events"]
    ]
    assert "replica_failed" in kinds


def test_seed_request_errors_clearly_offline(serve: ServeProcess) -> None:
    """DeepInfra's own example: Llama-2 from the Hub, on a machine without internet."""
    seed = {
        "model_name": "test-model",
        "gpu": "A100-80GB",
        "num_gpus": 2,
        "max_batch_size": 64,
        "hf": {"repo": "meta-llama/Llama-2-7b-chat-hf"},
        "settings": {"min_instances": 0, "max_instances": 1},
    }
    r = serve.client.post("/deploy/llm", json=seed)
    assert r.status_code == 201, r.text
    dep = wait_status(serve, r.json()["deploy_id"], "errored", timeout=120)
    reason = dep["fail_reason"]
    assert "meta-llama/Llama-2-7b-chat-hf" in reason and "Hugging Face" in reason, reason
    assert dep["instances"]["running"] == 0
    # Nothing crashed: the server still answers, and the deployment can be inspected and deleted.
    assert serve.client.get("/readyz").status_code == 200
    r = serve.client.post(
        "/v1/openai/chat/completions",
        json={"model": "admin/test-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and "meta-llama" in r.json()["error"]["message"]
    assert serve.client.delete(f"/deploy/{dep['deploy_id']}").status_code == 200


def test_restart_adopts_replicas_and_shutdown_leaves_no_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    args = ["--gpus", "A100-80GB:8"]
    first = ServeProcess(data, args)
    try:
        dep = create(first, "durable")
        wait_status(first, dep["deploy_id"], "ready")
        [pid] = replica_pids(first)
        # A crash of the control plane (SIGKILL: no clean-up at all) leaves the replica running.
        first.stop(signal.SIGKILL)
        assert alive(pid)
        second = ServeProcess(data, args)
        try:
            again = wait_status(second, dep["deploy_id"], "ready")
            assert again["instances"]["running"] == 1
            assert replica_pids(second) == [pid]
            r = second.client.post(
                "/v1/openai/completions",
                json={"model": "admin/durable", "prompt": "x", "max_tokens": 2},
            )
            assert r.status_code == 200, r.text
            time.sleep(1)  # a few reconcile passes: still exactly one replica
            assert replica_pids(second) == [pid]
        finally:
            # A clean drain exits 0 (uvicorn alone re-raised the signal: -SIGTERM).
            assert second.stop(signal.SIGTERM) == 0
            assert "Application shutdown complete" in second.log_path.read_text()
        wait_until(lambda: not alive(pid), timeout=30, what="the replica to stop with the server")
    finally:
        first.stop(signal.SIGKILL)
