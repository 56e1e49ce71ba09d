"""The issue's "done when" (issue 14), end to end: a Ray cluster on 127.0.0.1 (a head without
GPUs, worker A with 1 virtual A100 and worker B with 2), two `modelhost serve --backend ray`
processes on one PostgreSQL database, simulator replicas:

1. a deployment of 2 replicas lands on the two workers; requests (one of them a stream) through
   BOTH servers' gateways succeed (the follower routes from the rows the leader writes);
2. the leading server is SIGKILLed: the other takes the lease over within 15 s (the TTL path:
   the same-host shortcut is off, as between two hosts), adopts the same Ray actors (same names,
   same engine pids), starts none twice and leaves none orphaned (counted from the namespace's
   named actors, the database's live rows and the engine processes on this host), and serves;
3. worker A's raylet is SIGKILLed under a stream on each replica: the stream on B completes,
   later requests succeed, and the new leader restarts A's replica on B.

Everything stays on 127.0.0.1, checked from the sockets the processes actually use (as in
test_ray_e2e.py). The cluster and both servers are always stopped at the end. About 40 s.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ServeProcess, wait_until
from tests.e2e.deployments import create, engine_pids, get, live_rows, wait_status
from tests.e2e.test_ray_e2e import completed, running_on, stream
from tests.pg import pg_url  # noqa: F401  (a fixture)
from tests.ray_cluster import (
    LoopbackCluster,
    loopback_violations,
    node_addresses,
    require_ray,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Not test_ray_e2e's: the engines' log folder on the "nodes" is per namespace, and each test
# removes its own at the end (another run of the suite may run that test meanwhile).
NAMESPACE = "modelhost-e2e-two"
TAKEOVER_PROMISE_S = 15.0
ENV = {
    "MODELHOST_SECRET_KEY": "BEyAW_GGiz09l-_XnX8U0GJ8JRUUUnnyuos9zvAZOZQ=",
    "MODELHOST_LEADER_LEASE_LOCAL_TAKEOVER": "false",
    "MODELHOST_ROUTING_POLL_S": "0.25",
    "MODELHOST_RAY_NAMESPACE": NAMESPACE,
    "RAY_USAGE_STATS_ENABLED": "0",
}
NAME = "twoservers"
MODEL = f"admin/{NAME}"


@pytest.fixture
def cluster() -> Iterator[LoopbackCluster]:
    require_ray()
    # A short path of its own: Ray's socket paths under it must stay within 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="mh-ray-"))
    c = LoopbackCluster(root / "t")
    try:
        c.start_head()
        c.add_worker(1)  # worker A
        c.add_worker(2)  # worker B: room for A's replica when A is lost
        yield c
    finally:
        c.stop()
        shutil.rmtree(Path(tempfile.gettempdir(), "modelhost-ray", NAMESPACE), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        assert c.processes() == [], "Ray processes outlived the test cluster"


@pytest.fixture
def driver(cluster: LoopbackCluster) -> Iterator[Any]:
    from modelhost.orchestrator.backends.ray_backend import connect

    connect(cluster.address, NAMESPACE)
    import ray

    yield ray
    ray.shutdown()


def ray_serve(cluster: LoopbackCluster, data: Path, database_url: str) -> ServeProcess:
    return ServeProcess(
        data,
        ["--backend", "ray", "--ray-address", cluster.address],
        MODELHOST_DATABASE_URL=database_url,
        **ENV,
    )


def readyz(server: ServeProcess) -> dict[str, Any]:
    r = httpx.get(server.url + "/readyz", timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json())


def named_actors(ray: Any) -> list[str]:
    """Every named actor of the namespace Ray still lists (a duplicate or an orphan shows here,
    answering or not)."""
    return sorted(
        e["name"]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == NAMESPACE
    )


def actors(ray: Any) -> dict[str, dict[str, Any]]:
    """replica id -> where its engine runs (host, port, pid, node_id, actor_pid), for the
    actors that answer (not those of a lost node)."""
    out: dict[str, dict[str, Any]] = {}
    for name in named_actors(ray):
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
            info = ray.get(handle.launch_info.remote(), timeout=10)
        except Exception:
            continue
        if info:
            out[name.removeprefix("modelhost-replica-")] = info
    return out


def complete(server: ServeProcess) -> httpx.Response:
    return server.client.post(
        "/v1/openai/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
    )


def assert_loopback(cluster: LoopbackCluster, *servers: ServeProcess) -> None:
    procs: list[psutil.Process] = [psutil.Process()]
    for s in servers:
        if s.proc.poll() is None:
            procs += [psutil.Process(s.proc.pid), *psutil.Process(s.proc.pid).children(True)]
    violations = loopback_violations([*cluster.processes(), *procs])
    assert violations == [], violations


@contextlib.contextmanager
def stopped_at_end(servers: list[ServeProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for s in reversed(servers):
            with contextlib.suppress(Exception):
                s.stop(signal.SIGTERM, check_in_flight=False)


def test_two_servers_on_one_database_survive_a_leader_and_a_node(
    cluster: LoopbackCluster,
    driver: Any,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    began = time.monotonic()
    servers: list[ServeProcess] = []
    with stopped_at_end(servers):
        servers.append(a := ray_serve(cluster, tmp_path / "a", pg_url))  # migrates, leads
        servers.append(b := ray_serve(cluster, tmp_path / "b", pg_url))
        assert readyz(a)["leader"] is True
        assert readyz(b)["leader"] is False

        # 1. Created through the follower; the leader places one replica per worker.
        dep = create(b, NAME, settings={"min_instances": 2, "max_instances": 2})
        deploy_id = dep["deploy_id"]
        wait_status(a, deploy_id, "ready", timeout=60)
        where = wait_for(lambda: (w := actors(driver)) and len(w) == 2 and w, 30, "2 actors")
        assert len({info["node_id"] for info in where.values()}) == 2, where
        assert {info["host"] for info in where.values()} == {"127.0.0.1"}
        assert set(node_addresses(driver.nodes())) == {"127.0.0.1"}
        pids = {info["pid"] for info in where.values()}
        assert engine_pids(MODEL) == pids
        # Through both gateways: a stream and a completion each (the follower's gateway sees
        # the replicas once the leader wrote them ready and its routing poll read them).
        for server in (a, b):
            wait_until(
                lambda s=server: complete(s).status_code == 200,
                timeout=10,
                what=f"a completion through {server.url}",
            )
            out: list[str] = []
            stream(server, MODEL, 5, out)
            assert completed(out), out
        assert_loopback(cluster, a, b)

        # 2. The leader dies without a word; its detached actors run on.
        a.stop(signal.SIGKILL, check_in_flight=False)
        killed = time.monotonic()
        assert complete(b).status_code == 200  # the follower serves from the rows meanwhile
        wait_until(lambda: readyz(b)["leader"], timeout=TAKEOVER_PROMISE_S + 5, interval=0.2)
        took = time.monotonic() - killed
        print(f"takeover: {took:.1f} s after the leader's SIGKILL")
        assert took <= TAKEOVER_PROMISE_S
        time.sleep(2)  # a few reconcile passes: nothing may start twice nor be killed
        after = actors(driver)
        assert after.keys() == where.keys(), (where, after)
        assert {k: v["pid"] for k, v in after.items()} == {k: v["pid"] for k, v in where.items()}
        assert named_actors(driver) == sorted(f"modelhost-replica-{k}" for k in where)
        assert engine_pids(MODEL) == pids
        rows = live_rows(pg_url, deploy_id)
        assert sorted(r[0] for r in rows) == sorted(where), rows
        assert all(state == "ready" for _, _, state in rows), rows
        assert get(b, deploy_id)["instances"]["running"] == 2
        for _ in range(3):
            r = complete(b)
            assert r.status_code == 200, r.text
        out = []
        stream(b, MODEL, 5, out)
        assert completed(out), out
        events = b.client.get(f"/deploy/{deploy_id}/events", params={"limit": 200}).json()
        adopted = [e for e in events["events"] if e["kind"] == "replica_adopted"]
        assert len(adopted) == 2, adopted

        # 3. Worker A dies under a stream on each replica; the new leader moves its replica.
        worker_a = next(
            n["NodeID"] for n in driver.nodes() if n["Alive"] and n["Resources"].get("GPU") == 1
        )
        lost = next(rid for rid, info in where.items() if info["node_id"] == worker_a)
        kept = next(rid for rid in where if rid != lost)
        outs: list[list[str]] = [[], []]
        threads = [threading.Thread(target=stream, args=(b, MODEL, 400, outs[i])) for i in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.3)
        wait_for(
            lambda: all(running_on(info) == 1 for info in where.values()),
            10,
            "one stream running on each replica",
        )
        cluster.kill_node(cluster.workers[0])
        node_killed = time.monotonic()
        lost_engine = where[lost]["pid"]
        wait_for(lambda: not psutil.pid_exists(lost_engine), 30, "A's engine to be gone", 0.02)
        print(f"A's engine gone {time.monotonic() - node_killed:.2f} s after its raylet's SIGKILL")
        print("streams so far:", [len(o) for o in outs])
        later: list[list[str]] = [[] for _ in range(5)]
        for one in later:
            stream(b, MODEL, 5, one)
        for t in threads:
            t.join(60)
        assert sum(completed(o) for o in outs) == 1, outs  # the one on B
        cut = next(o for o in outs if not completed(o))  # the one on A: a clean error event
        assert cut[0] == "status 200", cut
        error = json.loads(cut[-1].removeprefix("data: "))["error"]
        assert error["code"] == "replica_failed", cut
        assert all(completed(o) for o in later), later

        def moved() -> dict[str, Any] | None:
            now = actors(driver)
            if get(b, deploy_id)["status"] != "ready" or len(now) != 2 or lost in now:
                return None
            return now

        now = wait_for(moved, 60, "A's replica to be restarted on worker B", interval=0.5)
        assert kept in now and now[kept]["pid"] == where[kept]["pid"]
        assert {info["node_id"] for info in now.values()} == {where[kept]["node_id"]}
        assert named_actors(driver) == sorted(f"modelhost-replica-{k}" for k in now)
        assert engine_pids(MODEL) == {info["pid"] for info in now.values()}
        assert sorted(r[0] for r in live_rows(pg_url, deploy_id)) == sorted(now)
        assert complete(b).status_code == 200
        assert_loopback(cluster, b)
        print(f"whole scenario: {time.monotonic() - began:.1f} s")
    # The survivor led at its clean shutdown: it stopped every replica.
    wait_until(lambda: not engine_pids(MODEL), timeout=30, what="no engine left")
    assert named_actors(driver) == []
