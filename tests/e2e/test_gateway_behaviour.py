"""End to end through the gateway: rolling updates, queueing, cancellation, log following."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from datetime import datetime

import httpx
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    ServeProcess,
    auth,
    gateway_in_flight,
    stream_then_hang_up,
    wait_until,
)
from tests.e2e.deployments import create, get, replica_pids, wait_status

pytestmark = pytest.mark.e2e


def complete(server: ServeProcess, model: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/openai/completions",
        json={"model": model, "prompt": "x", "max_tokens": max_tokens},
        headers=auth(ADMIN_TOKEN),
        timeout=60,
    )


def test_config_change_rolls_replicas_without_failed_requests(serve: ServeProcess) -> None:
    dep = create(serve, "roll", engine_args=["--tpot-ms", "5"])
    wait_status(serve, dep["deploy_id"], "ready")
    [old_pid] = replica_pids(serve)
    stop = threading.Event()
    codes: list[int] = []

    def load() -> None:
        while not stop.is_set():
            codes.append(complete(serve, "admin/roll").status_code)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        r = serve.client.put(
            f"/deploy/{dep['deploy_id']}",
            json={"config": {"max_batch_size": 8, "engine_args": ["--tpot-ms", "4"]}},
        )
        assert r.status_code == 200, r.text
        wait_until(
            lambda: get(serve, dep["deploy_id"])["status"] == "updating",
            timeout=30,
            interval=0.05,
            what="status updating",
        )
        wait_until(
            lambda: (
                old_pid not in replica_pids(serve)
                and get(serve, dep["deploy_id"])["status"] == "ready"
            ),
            timeout=60,
            what="the old replica replaced",
        )
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert codes and set(codes) == {200}, codes
    assert get(serve, dep["deploy_id"])["config"]["max_batch_size"] == 8


def test_queue_full_is_429_with_retry_after(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = ServeProcess(
        tmp_path / "data",
        ["--gpus", "A100-80GB:1"],
        MODELHOST_QUEUE_MIN="2",
        MODELHOST_QUEUE_FACTOR="0",
    )
    try:
        dep = create(server, "tiny", max_batch_size=1, engine_args=["--tpot-ms", "50"])
        wait_status(server, dep["deploy_id"], "ready")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(complete, server, "admin/tiny", 20) for _ in range(8)]
            results = [f.result() for f in futures]
        codes = sorted(r.status_code for r in results)
        # One runs, two wait in the queue, the rest are turned away at once.
        assert codes.count(200) >= 3 and 429 in codes, codes
        rejected = next(r for r in results if r.status_code == 429)
        assert rejected.headers["retry-after"].isdigit()
        assert rejected.json()["error"]["code"] == "queue_full"
    finally:
        server.stop()


def test_client_disconnect_cancels_upstream(serve: ServeProcess) -> None:
    dep = create(serve, "cancel", engine_args=["--tpot-ms", "50"])
    wait_status(serve, dep["deploy_id"], "ready")
    body = {
        "model": "admin/cancel",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 500,
        "stream": True,
    }
    stream_then_hang_up(serve, body)

    # The gateway's in-flight count drops back to zero long before 500 tokens at 50 ms each.
    wait_until(
        lambda: gateway_in_flight(serve, dep["deploy_id"]) == 0,
        timeout=10,
        what="the request to be cancelled",
    )
    obs = serve.client.get(f"/deploy/{dep['deploy_id']}/logs").json()["entries"]
    assert obs  # the replica logged its start
    assert all(e["ts"] and datetime.fromisoformat(e["ts"]) for e in obs), obs


def test_logs_follow_streams_new_lines(serve: ServeProcess) -> None:
    dep = create(serve, "logs")
    got: list[dict[str, str]] = []
    done = threading.Event()

    def follow() -> None:
        with httpx.stream(
            "GET",
            serve.url + f"/deploy/{dep['deploy_id']}/logs",
            params={"follow": "true", "limit": 5},
            headers=auth(ADMIN_TOKEN),
            timeout=30,
        ) as r:
            for line in r.iter_lines():
                got.append(json.loads(line))
                if any("ready" in e["line"] for e in got):
                    done.set()
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert done.wait(30), got
    assert all(set(e) == {"ts", "replica", "line"} for e in got)
    # ISO 8601 UTC, like every time the API returns.
    assert all(e["ts"].endswith("Z") and datetime.fromisoformat(e["ts"]) for e in got), got
    time.sleep(0.1)
