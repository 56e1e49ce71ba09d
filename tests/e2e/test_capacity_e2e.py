"""Capacity that cannot be had, against a running server (issue 9 items 5 and 10): replicas that
don't fit are pending with the reason, requests for a deployment that can't get a replica are
refused at once, and one tenant cannot take every CPU slot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess, auth, wait_until
from tests.e2e.deployments import create, get, wait_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One A100 and two CPU slots: so one CPU slot per (non-admin) user by default."""
    data: Path = tmp_path_factory.mktemp("capacity") / "data"
    server = ServeProcess(
        data, ["--gpus", "A100-80GB:1", "--cpu-slots", "2"], MODELHOST_AUTOSCALE_INTERVAL_S="0.3"
    )
    try:
        yield server
    finally:
        server.stop()


def chat(server: ServeProcess, model: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/openai/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=auth(token),
        timeout=120,
    )


def events(server: ServeProcess, deploy_id: str) -> list[dict[str, Any]]:
    return list(server.client.get(f"/deploy/{deploy_id}/events").json()["events"])


def assert_no_capacity(response: httpx.Response, what: str) -> None:
    # The cold-start hold would end in `cold_start_timeout` after cold_start_timeout_s (300 s);
    # `no_capacity` is the refusal made before holding anything.
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "no_capacity", response.text
    assert what in response.json()["error"]["message"], response.text
    assert int(response.headers["retry-after"]) > 0


def test_unplaceable_replicas_are_pending_and_requests_fail_fast(
    small_server: ServeProcess,
) -> None:
    server = small_server
    first = create(server, "holder")
    wait_status(server, first["deploy_id"], "ready")

    # Wants 2 replicas; the only A100 is taken. Not standby, not "initializing": pending, with
    # both replicas counted and the reason, also recorded as an event.
    second = create(server, "wants-two", settings={"min_instances": 2, "max_instances": 2})
    second_id = second["deploy_id"]
    # After an autoscaler decision (it used to cap the count to the free GPUs, i.e. to 0).
    wait_until(
        lambda: get(server, second_id)["autoscaling"]["reason"],
        timeout=30,
        what="an autoscaler decision",
    )
    dep = wait_until(
        lambda: (d := get(server, second_id))["instances"]["pending"] == 2 and d,
        timeout=30,
        what="two pending replicas",
    )
    assert dep["autoscaling"]["desired_replicas"] == 2
    assert dep["status"] == "pending"
    assert dep["instances"] == {"running": 0, "pending": 2}
    reason = dep["autoscaling"]["pending_reason"]
    assert "A100-80GB" in reason, reason
    assert [e for e in events(server, second_id) if e["kind"] == "pending"]
    assert_no_capacity(chat(server, "admin/wants-two"), "A100-80GB")

    # Scale to zero allowed, but no room for a first replica: standby (it wants nothing), and
    # a request is refused at once instead of waiting for a start that cannot happen.
    idle = create(server, "idle", settings={"min_instances": 0, "max_instances": 1})
    idle_id = idle["deploy_id"]
    dep = wait_until(
        lambda: (
            (d := get(server, idle_id))["status"] == "standby"
            and d["autoscaling"]["pending_reason"]
            and d
        ),
        timeout=30,
        what="standby with a pending reason",
    )
    assert dep["instances"] == {"running": 0, "pending": 0}
    assert_no_capacity(chat(server, "admin/idle"), "A100-80GB")
    assert get(server, idle_id)["autoscaling"]["desired_replicas"] == 0

    # Capacity comes back: the pending deployment gets what fits, and serves.
    assert server.client.delete(f"/deploy/{first['deploy_id']}").status_code == 200
    dep = wait_status(server, second_id, "ready")
    dep = wait_until(
        lambda: (d := get(server, second_id))["instances"] == {"running": 1, "pending": 1} and d,
        timeout=30,
        what="one running, one still pending",
    )
    assert chat(server, "admin/wants-two").status_code == 200


def test_one_user_cannot_take_every_cpu_slot(small_server: ServeProcess) -> None:
    server = small_server
    tokens = {}
    for name in ("alice", "bob"):
        r = server.client.post("/v1/users", json={"username": name})
        assert r.status_code == 201, r.text
        tokens[name] = r.json()["token"]

    def create_as(user: str, name: str) -> str:
        body = {"model_name": name, "gpu": "CPU", "engine": "simulator", "max_batch_size": 2}
        r = httpx.post(server.url + "/deploy/llm", json=body, headers=auth(tokens[user]))
        assert r.status_code == 201, r.text
        return str(r.json()["deploy_id"])

    alice = [create_as("alice", "one"), create_as("alice", "two")]
    # alice's share of 2 slots is 1: one of hers runs, the other waits and says why.
    wait_until(
        lambda: sorted(get(server, d)["status"] for d in alice) == ["pending", "ready"],
        timeout=60,
        what="one of alice's deployments ready, the other pending",
    )
    [waiting] = [get(server, d) for d in alice if get(server, d)["status"] == "pending"]
    assert waiting["instances"] == {"running": 0, "pending": 1}
    assert "alice already holds 1 CPU slot" in waiting["autoscaling"]["pending_reason"]
    assert_no_capacity(chat(server, waiting["model_name"], tokens["alice"]), "alice")

    # bob still gets the other slot.
    bob = create_as("bob", "three")
    wait_status(server, bob, "ready")
    assert chat(server, "bob/three", tokens["bob"]).status_code == 200


def test_a_rolling_update_with_no_spare_slot_holds_requests_instead_of_refusing(
    tmp_path: Path,
) -> None:
    """The only CPU slot is the deployment's own: the new replica can only start on the slot
    the old one frees, so the old one drains first. Requests meanwhile are held for the new
    replica (the deployment is `updating`), not refused for capacity."""
    server = ServeProcess(tmp_path / "data", ["--cpu-slots", "1"])
    try:
        dep = create(server, "solo", gpu="CPU", engine_args=["--tpot-ms", "5"])
        wait_status(server, dep["deploy_id"], "ready")
        assert chat(server, "admin/solo").status_code == 200
        put = {"config": {"engine_args": ["--tpot-ms", "6"]}}
        r = server.client.put(f"/deploy/{dep['deploy_id']}", json=put)
        assert r.status_code == 200, r.text
        statuses = []
        replicas = set()

        # Requests until a replica of the new config has answered (bounded by the wait below).
        def new_replica_served() -> bool:
            response = chat(server, "admin/solo")
            statuses.append(response.status_code)
            replicas.add(response.headers.get("x-replica", ""))
            return "-g2-" in response.headers.get("x-replica", "")

        wait_until(new_replica_served, timeout=120, interval=0.05, what="the new replica")
        assert set(statuses) == {200}, statuses
        changes = [e["message"] for e in events(server, dep["deploy_id"]) if e["kind"] == "status"]
        # After the first start (pending -> initializing -> ready), never pending again.
        after_start = changes[changes.index("initializing -> ready") :]
        assert not any(c.endswith("-> pending") for c in after_start), (
            changes,
            [(e["kind"], e["message"]) for e in events(server, dep["deploy_id"])],
        )
    finally:
        server.stop()
