"""`modelhost serve`: run the app under uvicorn with a clean shutdown.

The listening socket is bound and the data directory locked *before* the app starts its
control loops, so a second server started by mistake fails at once instead of adopting (and
fighting over) the first one's replicas. On SIGINT/SIGTERM uvicorn stops accepting connections
and waits (bounded) for in-flight requests; then the app's lifespan stops the loops and every
replica, so no engine process is left behind.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import sys
from pathlib import Path
from typing import IO

import uvicorn

from modelhost.config import Settings


class StartupError(Exception):
    pass


def _lock_data_dir(data_dir: Path) -> IO[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "serve.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StartupError(
            f"another modelhost server is already running with data dir {data_dir}"
        ) from None
    return handle


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def run(settings: Settings) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The control loops probe every replica's /health or /stats each second; httpx logs each
    # request at INFO, which buried everything else in the log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        lock = _lock_data_dir(settings.data_dir)
        sock = _bind(settings.host, settings.port)
    except StartupError as exc:
        print(f"modelhost: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

    from modelhost.api.app import create_app

    app = create_app(settings)
    token = app.state.admin_token
    if token:
        print(
            f"modelhost: created user 'admin'; its token (shown once, also saved to "
            f"{settings.data_dir / 'admin-token'}):\n  {token}",
            flush=True,
        )
    config = uvicorn.Config(
        app,
        log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    print(f"modelhost: serving on http://{settings.host}:{settings.port}", flush=True)
    if settings.demo:
        from modelhost.demo import start_demo

        start_demo(settings, token)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        lock.close()
