"""A small Ray cluster on 127.0.0.1 for the Ray backend's tests: a head without GPUs and worker
nodes with virtual GPUs, all on this machine, all on loopback.

Ray swaps a loopback node address for the host's outward one when it starts a node (see
`keep_loopback_addresses`), so every `ray start` here runs through a launcher that keeps
127.0.0.1 first. `loopback_violations()` lists every socket of the cluster's processes (and of
the processes given) that is bound to or connected to anything but 127.0.0.1: the tests assert
it is empty. The cluster lives in its own temp dir; `stop()` kills exactly the processes whose
command line names that dir (never another cluster's), by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import free_port

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")

# `ray start` with Ray's loopback swap turned off (the same patch the backend applies).
_LAUNCHER = (
    "import sys; "
    "from modelhost.orchestrator.backends.ray_backend import keep_loopback_addresses; "
    "keep_loopback_addresses(); "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)

# Fast failure detection: a lost node is declared dead in about 1.5 s instead of ~30 s.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed: `make install` (or pip install 'modelhost[ray]')")


@dataclass
class Worker:
    manager_port: int
    gpus: int
    gpu_type: str


class LoopbackCluster:
    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers: list[Worker] = []
        self.env = {**os.environ, **RAY_ENV}

    def _ray_start(self, args: list[str]) -> None:
        cmd = [sys.executable, "-c", _LAUNCHER, "start", *args]
        out = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if out.returncode != 0:
            raise AssertionError(f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")

    def _common(self) -> list[str]:
        return [
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]

    def start_head(self) -> None:
        self._ray_start(
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                "--num-gpus=0",
                f"--temp-dir={self.temp_dir}",
                *self._common(),
            ]
        )

    def add_worker(self, gpus: int, gpu_type: str = "A100-80GB") -> Worker:
        worker = Worker(free_port(), gpus, gpu_type)
        self._ray_start(
            [
                f"--address={self.address}",
                f"--num-gpus={gpus}",
                f"--resources={json.dumps({'accelerator_type:' + gpu_type: gpus})}",
                f"--node-manager-port={worker.manager_port}",
                *self._common(),
            ]
        )
        self.workers.append(worker)
        return worker

    # --- the cluster's processes --------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its temp dir or its GCS port, and
        their descendants (workers, agents, engines)."""
        marks = (str(self.temp_dir), f"{self.port}")
        roots: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if "ray" not in cmd and "raylet" not in cmd:
                continue
            if any(m in cmd for m in marks):
                roots[p.pid] = p
        found = dict(roots)
        for p in list(roots.values()):
            try:
                for c in p.children(recursive=True):
                    found[c.pid] = c
            except psutil.Error:
                continue
        return list(found.values())

    def raylet_of(self, worker: Worker) -> psutil.Process:
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if "raylet" in (p.info.get("name") or "") and (
                f"--node_manager_port={worker.manager_port}" in cmd
            ):
                return p
        raise AssertionError(f"no raylet with node manager port {worker.manager_port}")

    def kill_node(self, worker: Worker) -> None:
        """Lose a worker node: SIGKILL its raylet (its workers and engines go with it)."""
        raylet = self.raylet_of(worker)
        raylet.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        psutil.wait_procs(procs, timeout=10)


def loopback_violations(processes: Iterable[psutil.Process]) -> list[str]:
    """Sockets of these processes bound to or connected to anything but 127.0.0.1."""
    bad: list[str] = []
    for p in processes:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except psutil.Error:
            continue
        for c in conns:
            for label, addr in (("bound", c.laddr), ("peer", c.raddr)):
                if addr and addr.ip not in LOOPBACK:
                    bad.append(f"{name} (pid {p.pid}) {label} {addr.ip}:{addr.port} {c.status}")
    return bad


def node_addresses(nodes: list[dict[str, Any]]) -> list[str]:
    return [str(n["NodeManagerAddress"]) for n in nodes]


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
