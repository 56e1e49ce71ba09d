"""Time from "deployment created" to "first replica ready" on the Ray backend and on the local
backend, for the same engine (issue 14).

Starts two real `modelhost serve` processes, one per backend (the Ray one on a cluster on
127.0.0.1: a head and one worker with virtual A100s; tests/ray_cluster.py, everything on
loopback), and in each creates a simulator deployment (`--startup-s 0`), waits for `ready`
(polling GET /deploy/{id} every 20 ms) and deletes it, `--runs` times. The first run on Ray
includes Ray starting a worker process for the first actor; it is reported apart. Then, with
`--idle-replicas N` (8), it measures the server process's CPU while it only watches N ready
replicas for `--idle-seconds` (probes, polls, reconcile passes; the engines not included).
Both servers run with the tests' settings: reconcile and probe every 0.2 s.

    .venv/bin/python bench/ray_cold_start.py [--runs 5] [--idle-replicas 8]

Writes bench/results/ray_cold_start.json. Goal: Ray within 1 s of local.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ServeProcess  # noqa: E402
from tests.ray_cluster import LoopbackCluster  # noqa: E402

NAMESPACE = "modelhost-bench"
BODY = {
    "gpu": "A100-80GB",
    "engine": "simulator",
    "max_batch_size": 4,
    "engine_args": ["--startup-s", "0"],
}


def cold_starts(server: ServeProcess, runs: int) -> list[float]:
    out: list[float] = []
    for i in range(runs):
        t0 = time.perf_counter()
        r = server.client.post("/deploy/llm", json={"model_name": f"cold{i}", **BODY})
        assert r.status_code == 201, r.text
        deploy_id = r.json()["deploy_id"]
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            if server.client.get(f"/deploy/{deploy_id}").json()["status"] == "ready":
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"{deploy_id} not ready in 120 s")
        out.append(time.perf_counter() - t0)
        server.client.delete(f"/deploy/{deploy_id}")
        while (g := server.client.get(f"/deploy/{deploy_id}")).status_code == 200:
            if g.json()["status"] == "deleted":
                break
            time.sleep(0.05)
        time.sleep(1.0)  # let the replica's exit be observed before the next run
    return out


def summary(times: list[float]) -> dict[str, Any]:
    warm = times[1:] or times
    return {
        "first_s": round(times[0], 3),
        "median_s": round(statistics.median(warm), 3),
        "min_s": round(min(warm), 3),
        "max_s": round(max(warm), 3),
        "runs_s": [round(t, 3) for t in times],
    }


def watching_cost(server: ServeProcess, replicas: int, seconds: float) -> dict[str, Any]:
    """The server's CPU (its process and threads, not the engines) while it only watches
    `replicas` idle ready replicas: probes, polls, reconcile passes."""
    if replicas <= 0:
        return {}
    body = {
        "model_name": "idle",
        **BODY,
        "settings": {"min_instances": replicas, "max_instances": replicas},
    }
    r = server.client.post("/deploy/llm", json=body)
    assert r.status_code == 201, r.text
    deploy_id = r.json()["deploy_id"]
    deadline = time.monotonic() + 180
    while server.client.get(f"/deploy/{deploy_id}").json()["status"] != "ready":
        assert time.monotonic() < deadline, "the idle replicas did not become ready"
        time.sleep(0.2)
    time.sleep(2.0)
    proc = psutil.Process(server.proc.pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    cpu_ms = ((after.user - before.user) + (after.system - before.system)) * 1000
    return {
        "replicas": replicas,
        "server_cpu_ms_per_s": round(cpu_ms / seconds, 1),
        "server_cpu_ms_per_s_per_replica": round(cpu_ms / seconds / replicas, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--idle-replicas",
        type=int,
        default=8,
        help="then measure the server's CPU while it watches this many ready replicas (0: skip)",
    )
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray_cold_start.json")
    args = p.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gpus = max(2, args.idle_replicas)
        local = ServeProcess(root / "local", ["--gpus", f"A100-80GB:{gpus}"])
        try:
            result["local"] = summary(cold_starts(local, args.runs))
            watching = watching_cost(local, args.idle_replicas, args.idle_seconds)
            result["local_watching"] = watching
        finally:
            local.stop(check_in_flight=False)
        cluster = LoopbackCluster(root / "ray")
        try:
            cluster.start_head()
            cluster.add_worker(gpus)
            on_ray = ServeProcess(
                root / "ray-serve",
                ["--backend", "ray", "--ray-address", cluster.address],
                RAY_USAGE_STATS_ENABLED="0",
                MODELHOST_RAY_NAMESPACE=NAMESPACE,
            )
            try:
                result["ray"] = summary(cold_starts(on_ray, args.runs))
                result["ray_watching"] = watching_cost(
                    on_ray, args.idle_replicas, args.idle_seconds
                )
            finally:
                on_ray.stop(check_in_flight=False)
        finally:
            cluster.stop()
            node_logs = Path(tempfile.gettempdir(), "modelhost-ray", NAMESPACE)
            shutil.rmtree(node_logs, ignore_errors=True)
    result["ray_minus_local_median_s"] = round(
        result["ray"]["median_s"] - result["local"]["median_s"], 3
    )
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
