"""The request path's in-memory directory (issue 10, item 4), end to end with real `modelhost
serve` processes on 127.0.0.1:

- two processes on one database (a SQLite file, and PostgreSQL when there is one): a token
  revoked and a deployment deleted through process A stop being served by process B within
  the promised 1 s (asserted against 1.5 s: the promise plus the slack of a loaded machine);
- a database that stalls: requests for a running deployment keep being served while it does
  not answer, and once it answers again the server catches up (a change made meanwhile is
  seen, the token's last use is written);
- a clean shutdown writes the last use still queued (the database was locked when it began).

SQLite runs in WAL mode, where no lock another connection can take stops readers: a stall there
is a held write lock (every write waits), and the test shows that nothing on the request path
waits for it. PostgreSQL is reached through a TCP proxy the test pauses: nothing at all answers.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess, auth, wait_until
from tests.e2e.deployments import create, wait_status
from tests.pg import pg_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e

# The promise is 1 s; what the tests assert leaves room for a loaded 2-core machine.
PROMISE_S = 1.0
ASSERTED_S = 1.5
STALL_S = 4.0
# Failed authentications are throttled per client; these tests fail some on purpose.
ENV = {"MODELHOST_AUTH_FAILURES_BURST": "1000"}


def serve_on(data_dir: Path, database_url: str) -> ServeProcess:
    return ServeProcess(
        data_dir,
        ["--gpus", "A100-80GB:2", "--cpu-slots", "1"],
        MODELHOST_DATABASE_URL=database_url,
        **ENV,
    )


@contextlib.contextmanager
def two_servers(tmp_path: Path, database_url: str) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    # One at a time: the first one migrates the database.
    a = serve_on(tmp_path / "a", database_url)
    try:
        b = serve_on(tmp_path / "b", database_url)
        try:
            yield a, b
        finally:
            b.stop(check_in_flight=False)
    finally:
        a.stop(check_in_flight=False)


def until_changed(
    probe: Callable[[], int], expected: int, since: float, bound_s: float = 10.0
) -> float:
    """Poll `probe` (a status code) back to back until it is `expected`; the seconds from
    `since` to the first answer that was. Fails after `bound_s` (a guard against hangs)."""
    last = None
    while time.monotonic() - since < bound_s:
        last = probe()
        if last == expected:
            return time.monotonic() - since
        time.sleep(0.01)
    raise AssertionError(f"still {last} after {bound_s}s, expected {expected}")


def models(server: ServeProcess, token: str) -> int:
    return httpx.get(server.url + "/v1/models", headers=auth(token), timeout=30).status_code


def chat(server: ServeProcess, model: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers=auth(token),
        timeout=30,
    )


def check_propagation(a: ServeProcess, b: ServeProcess) -> dict[str, float]:
    """Revoke a token and delete a deployment through A; B stops serving them in time."""
    took: dict[str, float] = {}
    r = a.client.post("/v1/api-tokens", json={"name": "short-lived"})
    assert r.status_code == 201, r.text
    token, token_id = r.json()["token"], r.json()["token_id"]
    # B did not see the token created: its first use re-checks the database before a 401.
    assert models(b, token) == 200

    sent = time.monotonic()
    r = a.client.delete(f"/v1/api-tokens/{token_id}")
    assert r.status_code == 200, r.text
    assert models(a, token) == 401  # A's own write: at once
    took["token"] = until_changed(lambda: models(b, token), 401, sent)

    dep = create(a, "gone", engine_args=["--startup-s", "0.1"])
    r = a.client.post(f"/deploy/{dep['deploy_id']}/stop")
    assert r.status_code == 200, r.text
    # B knows the deployment (stopped: a 503 that names it) before it is deleted.
    wait_until(
        lambda: chat(b, "admin/gone").status_code == 503, timeout=10, what="B to see it stopped"
    )
    assert chat(b, "admin/gone").json()["error"]["code"] == "deployment_stopped"
    sent = time.monotonic()
    r = a.client.delete(f"/deploy/{dep['deploy_id']}")
    assert r.status_code == 200, r.text
    took["deployment"] = until_changed(lambda: chat(b, "admin/gone").status_code, 404, sent)
    assert chat(b, "admin/gone").json()["error"]["code"] == "model_not_found"
    for what, seconds in took.items():
        assert seconds <= ASSERTED_S, f"the {what} was served by B for {seconds:.2f}s"
    return took


def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with two_servers(tmp_path, url) as (a, b):
        took = check_propagation(a, b)
    print(f"B stopped serving after: {took}")


def test_two_processes_on_one_postgresql_database(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    with two_servers(tmp_path, pg_url) as (a, b):
        took = check_propagation(a, b)
    print(f"B stopped serving after: {took}")


# ---- a stalled database ---------------------------------------------------------------------


class PausableProxy:
    """A TCP proxy on 127.0.0.1 to `target`; `pause()` stops every byte either way (the
    connections stay open, so the database simply does not answer), `resume()` lets them
    through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        self._thread.join(5)
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.wait()  # a connection made during the stall waits too
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._open.wait()
                if self._stop.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def serve_during_stall(server: ServeProcess, model: str, token: str) -> list[float]:
    """Requests for the running deployment, back to back for STALL_S: each must succeed (a
    generous bound per request: it must not wait for the database)."""
    took: list[float] = []
    until = time.monotonic() + STALL_S
    while time.monotonic() < until:
        started = time.monotonic()
        r = chat(server, model, token)
        took.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
        assert took[-1] < 2.0, f"a request took {took[-1]:.2f}s during the stall"
    assert len(took) >= 5
    return took


def last_used(server: ServeProcess, token_id: str) -> str | None:
    tokens = server.client.get("/v1/api-tokens").json()
    [row] = [t for t in tokens if t["token_id"] == token_id]
    value: str | None = row["last_used_at"]
    return value


def new_token(server: ServeProcess, name: str) -> tuple[str, str]:
    r = server.client.post("/v1/api-tokens", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["token"], r.json()["token_id"]


Running = Callable[[str], tuple[ServeProcess, str]]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """Start a server on `database_url` with deployment admin/steady ready."""
    servers: list[ServeProcess] = []

    def start(database_url: str) -> tuple[ServeProcess, str]:
        server = serve_on(tmp_path / "data", database_url)
        servers.append(server)
        dep = create(server, "steady", engine_args=["--startup-s", "0.1"])
        wait_status(server, dep["deploy_id"], "ready")
        assert chat(server, "admin/steady").status_code == 200
        return server, dep["deploy_id"]

    yield start
    for server in servers:
        server.stop(check_in_flight=False)


def test_requests_are_served_while_postgresql_does_not_answer(
    running: Running,
    pg_url: str,  # noqa: F811
) -> None:
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = PausableProxy((host, int(port or 5432)))
    try:
        proxied = pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        server, _ = running(proxied)
        token, token_id = new_token(server, "used")  # in the directory; never used yet
        spare, spare_id = new_token(server, "spare")
        assert chat(server, "admin/steady", spare).status_code == 200
        assert last_used(server, token_id) is None

        proxy.pause()
        stalled_at = time.monotonic()
        took = serve_during_stall(server, "admin/steady", token)
        # Still ready for a load balancer (it serves from its snapshot), and it says why.
        ready = httpx.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded" and ready.json()["store"] is False
        # Meanwhile, straight to the database (not through the proxy): revoke the spare token.
        from sqlalchemy import create_engine, text

        direct = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with direct.begin() as conn:
            conn.execute(
                text("UPDATE api_tokens SET revoked_at = now() WHERE id = :id"), {"id": spare_id}
            )
        direct.dispose()
        proxy.resume()
        resumed = time.monotonic()
        after = until_changed(
            lambda: chat(server, "admin/steady", spare).status_code, 401, resumed, bound_s=30
        )
        assert chat(server, "admin/steady", token).status_code == 200
        # The token's first use, during the stall, was written once the database answered.
        wait_until(lambda: last_used(server, token_id), timeout=10, what="the queued last use")
        print(
            f"stall {resumed - stalled_at:.1f}s: {len(took)} requests served, slowest "
            f"{max(took) * 1000:.0f} ms; the revocation made meanwhile was seen {after:.2f}s "
            "after the database answered again"
        )
        assert after <= ASSERTED_S + 1.0  # + the reconnect of a pool that sat on a stall
    finally:
        proxy.close()


def test_requests_are_served_while_sqlite_is_locked(running: Running, tmp_path: Path) -> None:
    db_path = tmp_path / "locked.db"
    server, _ = running(f"sqlite:///{db_path}")
    token, token_id = new_token(server, "used")
    spare, spare_id = new_token(server, "spare")
    assert chat(server, "admin/steady", spare).status_code == 200
    assert last_used(server, token_id) is None

    locker = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    try:
        locker.execute("BEGIN IMMEDIATE")  # = EXCLUSIVE in WAL mode: every writer waits
        stalled_at = time.monotonic()
        # The token's first use queues the write of its last use, which waits for the lock.
        took = serve_during_stall(server, "admin/steady", token)
        locker.execute(
            "UPDATE api_tokens SET revoked_at = CURRENT_TIMESTAMP WHERE id = ?", (spare_id,)
        )
        assert last_used(server, token_id) is None  # still waiting: the lock is held
        locker.execute("COMMIT")
    finally:
        locker.close()
    released = time.monotonic()
    after = until_changed(lambda: chat(server, "admin/steady", spare).status_code, 401, released)
    wait_until(lambda: last_used(server, token_id), timeout=10, what="the queued last use")
    print(
        f"lock held {released - stalled_at:.1f}s: {len(took)} requests served, slowest "
        f"{max(took) * 1000:.0f} ms; the revocation committed at the release was seen "
        f"{after:.2f}s later"
    )
    assert after <= ASSERTED_S


def test_a_clean_shutdown_writes_the_last_use_still_queued(tmp_path: Path) -> None:
    """The last-use write of a token is queued when the server is told to stop, and cannot be
    written yet (another connection holds the write lock); the shutdown waits for it."""
    db_path = tmp_path / "m.db"
    server = serve_on(tmp_path / "data", f"sqlite:///{db_path}")
    locker = sqlite3.connect(db_path, isolation_level=None, timeout=30, check_same_thread=False)
    try:
        token, token_id = new_token(server, "last")
        locker.execute("BEGIN IMMEDIATE")
        assert models(server, token) == 200  # queues the write, which waits for the lock
        release = threading.Timer(1.5, locker.execute, ["COMMIT"])
        release.start()
        assert server.stop(check_in_flight=False) == 0  # SIGTERM: a clean shutdown
        release.join()
    finally:
        if server.proc.poll() is None:
            server.stop(check_in_flight=False)
        locker.close()
    check = sqlite3.connect(db_path)
    try:
        [(used,)] = check.execute("SELECT last_used_at FROM api_tokens WHERE id = ?", (token_id,))
    finally:
        check.close()
    assert used is not None
