"""Helpers shared by the end-to-end tests: create, read and wait on deployments of a real
`modelhost serve`, find its replica processes, register adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
