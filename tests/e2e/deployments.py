"""Helpers shared by the end-to-end tests: create, read and wait on deployments of a real
`modelhost serve`, find its replica processes, register adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.conftest import ServeProcess, wait_until

SIM = {
    "gpu": "A100-80GB",
    "engine": "simulator",
    "max_batch_size": 4,
    # Slow enough that a request is still in flight when the test kills the replica.
    "engine_args": ["--tpot-ms", "20", "--startup-s", "0.1"],
}


def create(server: ServeProcess, name: str, **over: Any) -> dict[str, Any]:
    body = {"model_name": name, **SIM, **over}
    r = server.client.post("/deploy/llm", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def get(server: ServeProcess, deploy_id: str) -> dict[str, Any]:
    return dict(server.client.get(f"/deploy/{deploy_id}").json())


def wait_status(
    server: ServeProcess, deploy_id: str, *statuses: str, timeout: float = 60
) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (d := get(server, deploy_id))["status"] in statuses and d,
        timeout=timeout,
        what=f"{deploy_id} to be {statuses}",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def replica_pids(server: ServeProcess) -> list[int]:
    import sqlite3

    db = sqlite3.connect(server.data_dir / "modelhost.db")
    try:
        rows = db.execute("SELECT pid FROM replicas WHERE exited_at IS NULL").fetchall()
    finally:
        db.close()
    return [int(r[0]) for r in rows if r[0]]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "adapters"


def register(serve: ServeProcess, name: str, dep: str) -> dict[str, Any]:
    body = {
        "name": name,
        "base": f"admin/{dep}",
        "source": {"local": {"path": str(EXAMPLES / name)}},
    }
    r = serve.client.post("/v1/adapters", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def engine_pids(served_name: str, root: Path | None = None) -> set[int]:
    """Every engine process on this host serving `served_name` (what an orphan would be); with
    `root`, only those running under it (a local backend's engine works in the data dir of the
    server that started it), so another test run's engines of the same name are not counted."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if state != "Z" and "modelhost.engine" in args and served_name in args:
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if root is None or cwd.startswith(str(root)):
                found.add(int(entry.name))
    return found


def live_rows(database_url: str, deploy_id: str) -> list[tuple[str, int, str]]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, pid, state FROM replicas "
                    "WHERE deploy_id = :d AND exited_at IS NULL ORDER BY id"
                ),
                {"d": deploy_id},
            ).all()
    finally:
        engine.dispose()
    return [(str(r[0]), int(r[1] or 0), str(r[2])) for r in rows]
