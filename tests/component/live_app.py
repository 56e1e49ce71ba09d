"""The whole app (create_app, lifespan included) behind a real uvicorn server on 127.0.0.1,
for tests that need real HTTP: raw sockets, chunked bodies, client addresses, headers. Replicas
run in-process (no engine process) unless `real_engines` asks for the local backend."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI

from modelhost.config import Settings
from modelhost.serve.app import create_app
from modelhost.serve.services import Services
from tests.component._live_server import serve_app
from tests.component.inprocess_engines import InProcessBackend
from tests.conftest import ADMIN_TOKEN, auth

# A bound against a server that never answers, not a performance assertion.
SOCKET_TIMEOUT_S = 30.0


@dataclass
class Live:
    url: str
    client: httpx.Client
    app: FastAPI

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def new_user(self, username: str) -> str:
        r = self.client.post("/v1/users", json={"username": username}, headers=auth(ADMIN_TOKEN))
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@contextmanager
def live_app(settings: Settings, *, real_engines: bool = False) -> Iterator[Live]:
    app = create_app(settings, backend=None if real_engines else InProcessBackend())
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=SOCKET_TIMEOUT_S) as client:
        yield Live(url, client, app)


def raw_exchange(url: str, head: str, parts: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Send a request head and body parts over a plain socket, without finishing anything the
    head promises; return the status, headers and body of whatever the server answers."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), SOCKET_TIMEOUT_S) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection without answering: {data!r}"
            data += chunk
        raw_head, _, body = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body
