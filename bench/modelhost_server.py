"""A real `modelhost serve` for the benchmarks: its command line and environment, and one
deployment created on it and waited for. Shared by bench/gateway.py and the modelhost-vllm peer
of bench/engine.py (bench/engine_peers.py); each starts and stops the process its own way.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(port: int, data_dir: Path, *capacity: str) -> list[str]:
    """`modelhost serve` on 127.0.0.1:port with its data in data_dir; `capacity` names the
    devices it manages (e.g. `--cpu-slots 1` or `--gpus A100-80GB:1`)."""
    return [
        sys.executable,
        "-m",
        "modelhost.cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *capacity,
    ]


def serve_env(token: str, **extra: str) -> dict[str, str]:
    """This environment plus modelhost from this checkout, `token` as the admin token and no
    GPU discovery (the server manages only the devices its command names)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "MODELHOST_ADMIN_TOKEN": token,
        "MODELHOST_DISCOVER_GPUS": "false",
        **extra,
    }


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def deploy_and_wait(
    base: str,
    token: str,
    body: dict[str, Any],
    *,
    timeout_s: float,
    poll_s: float,
    label: str,
    log: Path | None = None,
) -> str:
    """POST /deploy/llm with `body` plus one replica for the whole run (the autoscaler must
    neither add nor remove one), wait until the deployment is ready and return its id."""
    auth = auth_headers(token)
    body = {**body, "settings": {"min_instances": 1, "max_instances": 1}}
    created = httpx.post(f"{base}/deploy/llm", json=body, headers=auth, timeout=30)
    created.raise_for_status()
    deploy_id = str(created.json()["deploy_id"])
    see = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.get(f"{base}/deploy/{deploy_id}", headers=auth, timeout=10).json()
        if status["status"] == "ready":
            return deploy_id
        if status["status"] in ("errored", "failed"):
            raise RuntimeError(f"{label}: {status.get('fail_reason')}{see}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: the deployment did not become ready{see}")
        time.sleep(poll_s)
