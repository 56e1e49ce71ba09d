"""Autoscaling against a running server: standby with no process, cold start that drops
nothing, growth toward max under load, and the way back to standby."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess, auth, wait_until
from tests.e2e.deployments import alive, create, get, replica_pids, wait_status

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
    text = httpx.get(server.url + "/metrics", headers=auth(ADMIN_TOKEN)).text
    assert "modelhost_cold_start_first_token_seconds_count" in text


def events_since(server: ServeProcess, deploy_id: str, after: int) -> list[dict[str, Any]]:
    r = server.client.get(f"/deploy/{deploy_id}/events", params={"after": after})
    return list(r.json()["events"])


def test_request_during_scale_down_is_not_dropped(fast_serve: ServeProcess) -> None:
    server = fast_serve
    dep = create(
        server,
        "shrink",
        max_batch_size=2,
        settings=FAST,
        engine_args=["--tpot-ms", "20", "--startup-s", "0.2"],
    )
    deploy_id = dep["deploy_id"]
    wait_status(server, deploy_id, "ready")
    seen = max((e["id"] for e in events_since(server, deploy_id, 0)), default=0)
    # Load that needs more than one replica: 12 requests of ~1 s each at 2 per replica.
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(chat, server, "admin/shrink", 50) for _ in range(12)]
        peak = wait_until(
            lambda: (n := get(server, deploy_id)["instances"]["running"]) >= 2 and n,
            timeout=60,
            what="scale-out to 2 replicas",
        )
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 12, codes

    # The load is over: after the cooldown the autoscaler retires a replica. As soon as one is
    # draining, requests go out; each must be served by a replica that stays.
    draining = wait_until(
        lambda: [
            e for e in events_since(server, deploy_id, seen) if e["kind"] == "replica_draining"
        ],
        timeout=60,
        interval=0.05,
        what="a replica to start draining",
    )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        during = list(pool.map(lambda _: chat(server, "admin/shrink", 10), range(4)))
    assert [r.status_code for r in during] == [200] * 4, [r.text for r in during][:2]
    # "replica <id>: <reason>": none of them went to the replica on its way out.
    drained = draining[0]["message"].split()[1].rstrip(":")
    assert drained not in {r.headers["x-replica"] for r in during}
    # It was a real scale-down: the deployment ends with fewer replicas than at the peak.
    wait_until(
        lambda: get(server, deploy_id)["instances"]["running"] < peak,
        timeout=60,
        what="the instance count to drop",
    )
