"""The Ray backend end to end (issue 14): a real `modelhost serve --backend ray` on a small Ray
cluster on this machine (a head without GPUs, worker A with 1 virtual A100 and worker B with 2),
simulator replicas, requests through the gateway.

Everything stays on 127.0.0.1, and the tests check it from what the processes actually use:
`ray.nodes()` addresses, the GCS address, the engines' addresses the actors report, and every
socket of the cluster's processes and of the server (psutil). Skipped without Ray installed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess, auth
from tests.e2e.deployments import create, get, wait_status
from tests.ray_cluster import (
    LoopbackCluster,
    loopback_violations,
    node_addresses,
    require_ray,
    wait_for,
)

pytestmark = pytest.mark.e2e

HEADERS = auth(ADMIN_TOKEN)
NAMESPACE = "modelhost-e2e"
SIM_ARGS = ["--tpot-ms", "20", "--startup-s", "0.1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    require_ray()
    c = LoopbackCluster(tmp_path_factory.mktemp("ray") / "t")
    try:
        c.start_head()
        c.add_worker(1)  # worker A
        c.add_worker(2)  # worker B: room for A's replica when A is lost
        yield c
    finally:
        c.stop()
        # The engines' logs on the "nodes" (the backend's default place for them).
        shutil.rmtree(Path(tempfile.gettempdir(), "modelhost-ray", NAMESPACE), ignore_errors=True)
        assert c.processes() == [], "Ray processes outlived the test cluster"


@pytest.fixture(scope="module")
def driver(cluster: LoopbackCluster) -> Iterator[Any]:
    """This test process as a Ray driver, to ask the actors where they run."""
    from modelhost.orchestrator.backends.ray_backend import connect

    connect(cluster.address, NAMESPACE)
    import ray

    yield ray
    ray.shutdown()


def ray_serve(cluster: LoopbackCluster, data: Path) -> ServeProcess:
    return ServeProcess(
        data,
        ["--backend", "ray", "--ray-address", cluster.address],
        MODELHOST_RAY_NAMESPACE=NAMESPACE,
        RAY_USAGE_STATS_ENABLED="0",
    )


# What the tests of this module share, in order: the server (replaced by the adoption test)
# and the deployment.
STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def server(cluster: LoopbackCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data: Path = tmp_path_factory.mktemp("ray-serve") / "data"
    STATE["server"] = ray_serve(cluster, data)
    try:
        yield STATE["server"]
    finally:
        STATE["server"].stop(check_in_flight=False)


def actors(ray: Any) -> dict[str, dict[str, Any]]:
    """replica id -> where its engine runs (host, port, pid, node_id, actor_pid)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != NAMESPACE:
            continue
        handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
        try:
            info = ray.get(handle.launch_info.remote(), timeout=10)
        except Exception:  # an actor of a lost node
            continue
        if info:
            out[entry["name"].removeprefix("modelhost-replica-")] = info
    return out


def stream(server: ServeProcess, model: str, max_tokens: int, out: list[str]) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    try:
        with httpx.stream(
            "POST",
            server.url + "/v1/openai/chat/completions",
            json=body,
            headers=HEADERS,
            timeout=60,
        ) as r:
            out.append(f"status {r.status_code}")
            for line in r.iter_lines():
                if line:
                    out.append(line)
    except httpx.HTTPError as exc:
        out.append(f"failed: {exc!r}")


def completed(lines: list[str]) -> bool:
    return bool(lines) and lines[0] == "status 200" and lines[-1] == "data: [DONE]"


def running_on(info: dict[str, Any]) -> int:
    r = httpx.get(f"http://{info['host']}:{info['port']}/stats", timeout=5)
    return int(r.json()["running"])


def test_replicas_spread_over_two_nodes_serve_streams_and_stay_on_loopback(
    cluster: LoopbackCluster, driver: Any, server: ServeProcess
) -> None:
    dep = create(
        server,
        "spread",
        engine_args=SIM_ARGS,
        settings={"min_instances": 2, "max_instances": 2},
    )
    deploy_id = STATE["deploy_id"] = dep["deploy_id"]
    wait_status(server, deploy_id, "ready", timeout=120)
    where = wait_for(lambda: (a := actors(driver)) and len(a) == 2 and a, 30, "2 actors")
    nodes = {info["node_id"] for info in where.values()}
    assert len(nodes) == 2, f"both replicas on one node: {where}"
    head = next(n["NodeID"] for n in driver.nodes() if n["Resources"].get("GPU", 0) == 0)
    assert head not in nodes

    # One stream per replica through the gateway (least outstanding: the second goes to the
    # replica the first did not take), both seen running on their engines.
    outs: list[list[str]] = [[], []]
    threads = [
        threading.Thread(target=stream, args=(server, "admin/spread", 100, outs[i]))
        for i in range(2)
    ]
    for t in threads:
        t.start()
        time.sleep(0.3)
    wait_for(
        lambda: all(running_on(info) == 1 for info in where.values()),
        10,
        "one stream running on each replica",
    )
    for t in threads:
        t.join(30)
    assert all(completed(o) for o in outs), outs

    # Loopback, from what the processes use.
    assert set(node_addresses(driver.nodes())) == {"127.0.0.1"}
    assert driver.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {info["host"] for info in where.values()} == {"127.0.0.1"}
    detail = get(server, deploy_id)
    assert detail["status"] == "ready"
    serving = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(True)]
    engines = [psutil.Process(info["pid"]) for info in where.values()]
    # The cluster's processes, the server (a driver) and its children, the engines, and this
    # test process (a driver too).
    everyone = [*cluster.processes(), *serving, *engines, psutil.Process()]
    violations = loopback_violations(everyone)
    assert violations == [], violations

    # The engine is a child of its actor, on the node Ray chose.
    for info in where.values():
        assert psutil.Process(info["pid"]).ppid() == info["actor_pid"]

    # Logs through the API: the mirror of the engine's log on its node.
    r = server.client.get(f"/deploy/{deploy_id}/logs", params={"limit": 200})
    assert r.status_code == 200, r.text
    text = json.dumps(r.json())
    assert "on Ray node 127.0.0.1" in text and "engine ready" in text


def test_losing_a_node_moves_its_replica_and_spares_the_other(
    cluster: LoopbackCluster, driver: Any, server: ServeProcess
) -> None:
    deploy_id = STATE["deploy_id"]
    where = actors(driver)
    worker_a_node = next(
        n["NodeID"] for n in driver.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) == 1
    )
    lost = next(rid for rid, info in where.items() if info["node_id"] == worker_a_node)
    kept = next(rid for rid in where if rid != lost)
    lost_engine, lost_actor = where[lost]["pid"], where[lost]["actor_pid"]

    # A stream on each replica, then worker A dies under them.
    outs: list[list[str]] = [[], []]
    threads = [
        threading.Thread(target=stream, args=(server, "admin/spread", 150, outs[i]))
        for i in range(2)
    ]
    for t in threads:
        t.start()
        time.sleep(0.3)
    wait_for(
        lambda: all(running_on(info) == 1 for info in where.values()),
        10,
        "one stream running on each replica",
    )
    cluster.kill_node(cluster.workers[0])
    # More requests while the cluster notices the loss: every one succeeds.
    later: list[list[str]] = [[] for _ in range(5)]
    for out in later:
        stream(server, "admin/spread", 5, out)
    for t in threads:
        t.join(60)
    assert all(not t.is_alive() for t in threads)

    # The stream on the healthy replica finished; the one on the lost node ended with the
    # gateway's clean error event (never a hang, nor a 5xx status line).
    finished = [o for o in outs if completed(o)]
    assert len(finished) == 1, outs
    cut = next(o for o in outs if not completed(o))
    assert cut[0] == "status 200", cut
    error = json.loads(cut[-1].removeprefix("data: "))["error"]
    assert error["code"] == "replica_failed" and error["type"] == "server_error", cut
    assert all(completed(o) for o in later), later

    # The lost replica's engine and actor are gone; the replica is replaced on worker B.
    wait_for(lambda: not psutil.pid_exists(lost_engine), 30, "the lost engine to be gone")
    wait_for(lambda: not psutil.pid_exists(lost_actor), 30, "the lost actor to be gone")

    def moved() -> dict[str, Any] | None:
        now = actors(driver)
        d = get(server, deploy_id)
        if d["status"] != "ready" or len(now) != 2 or lost in now:
            return None
        return now

    now = wait_for(moved, 90, "the lost replica to be replaced on worker B", interval=0.5)
    assert kept in now
    assert {info["node_id"] for info in now.values()} == {where[kept]["node_id"]}
    events = server.client.get(f"/deploy/{deploy_id}/events", params={"limit": 200}).json()
    failed = [e for e in events["events"] if e["kind"] == "replica_failed"]
    assert any(lost in e["message"] and "Ray node died" in e["message"] for e in failed), failed
    print("failed events:", [e["message"] for e in failed])

    # The cluster's GPUs now count worker B's only, all of them in use; still all loopback.
    gpus = server.client.get("/deploy/llm/gpu_availability").json()["gpus"]
    a100 = next(g for g in gpus if g["gpu"] == "A100-80GB")
    assert (a100["total"], a100["available"]) == (2, 0), gpus
    # The cluster is short now: a new deployment is pending, with the reason.
    extra = create(server, "extra", engine_args=SIM_ARGS)
    dep = wait_for(
        lambda: (d := get(server, extra["deploy_id"]))["instances"]["pending"] == 1 and d,
        30,
        "the new deployment to be pending",
    )
    assert dep["status"] == "pending"
    assert "A100-80GB" in dep["autoscaling"]["pending_reason"], dep
    server.client.delete(f"/deploy/{extra['deploy_id']}")
    assert_loopback(cluster, server)


def assert_loopback(cluster: LoopbackCluster, server: ServeProcess) -> None:
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(True)]
    violations = loopback_violations([*cluster.processes(), *procs, psutil.Process()])
    assert violations == [], violations


def test_a_restarted_server_adopts_the_actors_without_duplicates(
    cluster: LoopbackCluster, driver: Any, server: ServeProcess
) -> None:
    before = actors(driver)
    assert len(before) == 2
    server.stop(sig=9, check_in_flight=False)  # no shutdown: the detached actors stay
    time.sleep(1)
    assert actors(driver).keys() == before.keys()
    STATE["server"] = again = ray_serve(cluster, server.data_dir)
    deploy_id = STATE["deploy_id"]
    wait_status(again, deploy_id, "ready", timeout=60)
    time.sleep(2)  # a few passes: nothing new may start
    after = actors(driver)
    assert after.keys() == before.keys(), (before, after)
    assert {k: v["pid"] for k, v in after.items()} == {k: v["pid"] for k, v in before.items()}
    out: list[str] = []
    stream(again, "admin/spread", 5, out)
    assert completed(out), out
    assert_loopback(cluster, again)


def test_stopping_the_server_stops_every_actor_and_engine(
    cluster: LoopbackCluster, driver: Any
) -> None:
    server = STATE["server"]
    where = actors(driver)
    assert where
    pids = [info["pid"] for info in where.values()] + [info["actor_pid"] for info in where.values()]
    server.stop(check_in_flight=False)
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 30, "engines and actors gone")
    assert actors(driver) == {}
