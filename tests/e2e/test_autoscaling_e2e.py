"""Autoscaling against a running server: standby with no process, cold start that drops
nothing, growth toward max under load, and the way back to standby."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess, auth, wait_until
from tests.e2e.test_serve_lifecycle import alive, create, get, replica_pids, wait_status

pytestmark = pytest.mark.e2e

FAST = {
    "min_instances": 0,
    "max_instances": 3,
    "idle_to_zero_s": 5,
    "cooldown_s": 2,
    "stable_window_s": 4,
    "panic_window_s": 1,
}


@pytest.fixture
def fast_serve(tmp_path):  # type: ignore[no-untyped-def]
    server = ServeProcess(
        tmp_path / "data", ["--gpus", "A100-80GB:4"], MODELHOST_AUTOSCALE_INTERVAL_S="0.3"
    )
    try:
        yield server
    finally:
        server.stop()


def chat(server: ServeProcess, model: str, max_tokens: int = 30) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/openai/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
        },
        headers=auth(ADMIN_TOKEN),
        timeout=120,
    )


def test_scale_to_zero_cold_start_burst_and_back(fast_serve: ServeProcess) -> None:
    server = fast_serve
    dep = create(
        server,
        "elastic",
        max_batch_size=4,
        settings=FAST,
        engine_args=["--tpot-ms", "30", "--startup-s", "0.5"],
    )
    deploy_id = dep["deploy_id"]
    # The first replica proves the deployment starts, then idles away to standby.
    wait_status(server, deploy_id, "ready")
    wait_status(server, deploy_id, "standby", timeout=60)
    wait_until(lambda: not replica_pids(server), timeout=30, what="no replica process in standby")

    # A burst of 50 concurrent requests at zero replicas: all are held, none dropped.
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(chat, server, "admin/elastic") for _ in range(50)]
        peak = wait_until(
            lambda: (n := len(replica_pids(server))) >= 2 and n, timeout=60, what="scale-out"
        )
        results = [f.result() for f in futures]
    assert [r.status_code for r in results] == [200] * 50, [
        r.text for r in results if r.status_code != 200
    ][:3]
    assert peak >= 2
    assert get(server, deploy_id)["settings"]["max_instances"] == 3
    assert len(replica_pids(server)) <= 3

    # Load stops: back to standby after the cooldown and idle period, no process left.
    pids = replica_pids(server)
    wait_status(server, deploy_id, "standby", timeout=60)
    wait_until(lambda: not any(alive(p) for p in pids), timeout=30, what="replicas stopped")
    events = server.client.get(f"/deploy/{deploy_id}/events").json()["events"]
    scale = [e["message"] for e in events if e["kind"] == "scale"]
    assert scale, "scaling decisions are recorded as events"
    text = httpx.get(server.url + "/metrics").text
    assert "modelhost_cold_start_first_token_seconds_count" in text


def test_request_during_scale_down_is_not_dropped(fast_serve: ServeProcess) -> None:
    server = fast_serve
    dep = create(
        server,
        "shrink",
        max_batch_size=2,
        settings={**FAST, "min_instances": 0},
        engine_args=["--tpot-ms", "20"],
    )
    wait_status(server, dep["deploy_id"], "ready")
    codes: list[int] = []
    # Keep a trickle of requests going across the moment the deployment scales down and up.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(6):
            futures = [pool.submit(chat, server, "admin/shrink", 10) for _ in range(4)]
            codes += [f.result().status_code for f in futures]
            wait_until(lambda: True, timeout=1)
    assert set(codes) == {200}, codes
