"""A real modelhost API server for SDK and CLI tests: the lead's app, on SQLite in a temp data
dir, served by uvicorn in a background thread on a free 127.0.0.1 port. Its replicas run
in-process (no engine process) unless `real_engines` asks for the local backend.

The SDK is synchronous httpx, and httpx.ASGITransport only drives async clients, so the
tests talk to a real socket instead (the same code path users hit).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from modelhost.serve.app import create_app
from tests.component.inprocess_engines import InProcessBackend
from tests.conftest import ADMIN_TOKEN, make_settings

STARTUP_DEADLINE_S = 60.0


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_token: str
    data_dir: Path


@contextmanager
def serve_app(app: object) -> Iterator[str]:
    """Run an ASGI app under uvicorn on 127.0.0.1:<free port>; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_DEADLINE_S)
        sock.close()


@contextmanager
def modelhost_server(
    data_dir: Path, *, real_engines: bool = False, **overrides: object
) -> Iterator[LiveServer]:
    """The real control plane with a known admin token, virtual GPUs and no GPU discovery."""
    # The suite's fast-test settings (short drains, quick probes), with 4 virtual A100s.
    base: dict[str, object] = {"gpus": "A100-80GB:4", "reconcile_interval_s": 0.1}
    settings = make_settings(data_dir, **{**base, **overrides})
    app = create_app(settings, backend=None if real_engines else InProcessBackend())
    with serve_app(app) as url:
        yield LiveServer(url=url, admin_token=ADMIN_TOKEN, data_dir=data_dir)
