"""`modelhost serve`: run the app under uvicorn with a clean shutdown.

The listening socket is bound and the data directory locked *before* the app starts its
control loops, so a second server started by mistake fails at once instead of adopting (and
fighting over) the first one's replicas. On SIGINT/SIGTERM uvicorn stops accepting connections,
/readyz fails, and requests in flight have `shutdown_grace_s` to finish; the gateway's drain
ends those still open just before that (streams with an error event), so uvicorn has nothing
left to cancel. Then the app's lifespan stops the loops and every replica, so no engine process
is left behind, and the process exits 0. A second SIGINT forces an exit at once (status 1;
replicas keep running and the next start adopts them).
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import IO

import uvicorn

from modelhost.config import Settings
from modelhost.gateway.drain import Drain, DrainMiddleware, cut_after
from modelhost.serve import log_config


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


class _Server(uvicorn.Server):
    """uvicorn's server, which also starts the gateway's drain on the stop signal, and does not
    re-raise that signal once it has shut down (uvicorn does, which made a clean shutdown exit
    with -SIGTERM instead of 0)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, cut_after_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._cut_after_s = cut_after_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        self.should_exit = True
        if self._loop is not None:
            # A signal handler runs between two bytecodes of the loop's thread: hand over.
            self._loop.call_soon_threadsafe(self._drain.begin, self._cut_after_s)


def run(settings: Settings) -> None:
    log_config.configure()
    try:
        lock = _lock_data_dir(settings.data_dir)
        sock = _bind(settings.host, settings.port)
    except StartupError as exc:
        print(f"modelhost: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

    from modelhost.serve.app import create_app

    app = create_app(settings)
    token = app.state.admin_token
    if token:
        print(
            f"modelhost: created user 'admin'; its token (shown once, also saved to "
            f"{settings.data_dir / 'admin-token'}):\n  {token}",
            flush=True,
        )
    drain: Drain = app.state.gateway.drain
    grace = settings.shutdown_grace_s
    config = uvicorn.Config(
        DrainMiddleware(app, drain),
        log_level="info",
        log_config=None,  # log_config.s handler, with its query-string redaction
        # A backstop only: the drain has ended every request by `cut_after(grace)`.
        timeout_graceful_shutdown=max(1, math.ceil(grace)),
    )
    print(f"modelhost: serving on http://{settings.host}:{settings.port}", flush=True)
    if settings.demo:
        from modelhost.serve.demo import start_demo

        start_demo(settings, token)
    server = _Server(config, drain, cut_after(grace))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        lock.close()
    if server.force_exit:
        raise SystemExit(1)
