"""Shared fixtures: temporary settings, an in-process app, and a real `modelhost serve`."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelhost.config import Settings

ADMIN_TOKEN = "mh_test_admin_token_0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data_dir,
        "admin_token": ADMIN_TOKEN,
        "gpus": "A100-80GB:8,H100-80GB:2",
        "discover_gpus": False,
        "cpu_slots": 2,
        "reconcile_interval_s": 0.2,
        "health_probe_interval_s": 0.2,
        "restart_backoff_base_s": 0.2,
        "restart_backoff_max_s": 1.0,
        "drain_timeout_s": 5.0,
        "shutdown_grace_s": 5.0,
        "cold_start_timeout_s": 60.0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; returns its value. Fails the test on timeout (a
    bound against hangs, not a performance assertion)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class ServeProcess:
    """A real `modelhost serve` on 127.0.0.1 in its own process group."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "MODELHOST_ADMIN_TOKEN": ADMIN_TOKEN,
            "MODELHOST_DISCOVER_GPUS": "false",
            "MODELHOST_RECONCILE_INTERVAL_S": "0.2",
            "MODELHOST_HEALTH_PROBE_INTERVAL_S": "0.2",
            "MODELHOST_RESTART_BACKOFF_BASE_S": "0.2",
            "MODELHOST_RESTART_BACKOFF_MAX_S": "1",
            "MODELHOST_DRAIN_TIMEOUT_S": "5",
            "MODELHOST_SHUTDOWN_GRACE_S": "5",
            **env,
        }
        cmd = [
            sys.executable,
            "-m",
            "modelhost.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            *(extra_args or []),
        ]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        self.client = httpx.Client(base_url=self.url, headers=auth(ADMIN_TOKEN), timeout=30)
        try:
            wait_until(self._ready, timeout=60, what="modelhost serve /readyz")
        except AssertionError:
            self.stop()
            log = self.log_path.read_text()[-4000:]
            raise AssertionError(f"serve did not start:\n{log}") from None

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited:\n{self.log_path.read_text()[-4000:]}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = 15, timeout: float = 30.0, check_in_flight: bool = True) -> int:
        """Stop the server; first (unless told not to) check that the gateway and the engines
        agree on what is in flight, the invariant a leaked replica slot breaks."""
        mismatch = None
        if check_in_flight and self.proc.poll() is None:
            mismatch = in_flight_mismatch(self)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.client.close()
        self._log.close()
        assert mismatch is None, mismatch
        return int(self.proc.returncode)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "data", ["--gpus", "A100-80GB:8", "--cpu-slots", "2"])
    try:
        yield server
    finally:
        server.stop()


def stream_then_hang_up(server: ServeProcess, body: dict[str, object]) -> None:
    """Start a streaming chat completion, read its first event, and close the connection."""
    with httpx.stream(
        "POST", server.url + "/v1/openai/chat/completions", json=body, headers=auth(ADMIN_TOKEN)
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                return


def gateway_in_flight(server: ServeProcess, deploy_id: str = "") -> float:
    """The gateway's in-flight gauge for a deployment (any deployment when not given)."""
    return next((n for dep, n in gateway_loads(server).items() if deploy_id in dep), 0.0)


def gateway_gauge(server: ServeProcess, name: str) -> dict[str, float]:
    """One of the gateway's per-deployment gauges (`modelhost_in_flight`, `modelhost_queued`,
    `modelhost_held_cold`) by deployment id."""
    text = httpx.get(server.url + "/metrics", headers=auth(ADMIN_TOKEN), timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + '{deployment="'):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(value)
    return out


def gateway_loads(server: ServeProcess) -> dict[str, float]:
    """The gateway's `modelhost_in_flight` per deployment id."""
    return gateway_gauge(server, "modelhost_in_flight")


def engine_loads(server: ServeProcess) -> dict[str, float]:
    """running + waiting per deployment id, from the `/stats` of every replica the server's
    database lists as not exited; a replica that does not answer (exited) counts 0."""
    db_path = server.data_dir / "modelhost.db"
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute(
            "SELECT deploy_id, port FROM replicas WHERE exited_at IS NULL AND port IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    out: dict[str, float] = {}
    for deploy_id, port in rows:
        try:
            stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=2).json()
            load = float(stats["running"]) + float(stats["waiting"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            load = 0.0
        out[deploy_id] = out.get(deploy_id, 0.0) + load
    return out


def in_flight_mismatch(server: ServeProcess, timeout: float = 15.0) -> str | None:
    """None once, for every deployment, the gateway's in-flight count equals the engines'
    running + waiting (waiting, bounded, for requests that are just ending); else what
    differs."""
    if not (server.data_dir / "modelhost.db").exists():
        return None
    last: tuple[dict[str, float], dict[str, float]] = ({}, {})

    def agree() -> bool:
        nonlocal last
        gateway, engines = gateway_loads(server), engine_loads(server)
        last = gateway, engines
        return all(gateway.get(d, 0.0) == engines.get(d, 0.0) for d in {*gateway, *engines})

    try:
        wait_until(agree, timeout=timeout, interval=0.2, what="in-flight counts to agree")
    except AssertionError:
        gateway, engines = last
        return f"gateway in flight {gateway} != engines' running + waiting {engines}"
    except httpx.HTTPError as exc:
        return f"could not read the in-flight counts: {exc!r}"
    return None
