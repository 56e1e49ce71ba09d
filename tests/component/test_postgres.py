"""The same control plane on PostgreSQL: migrations, users, tokens, deployments, restarts."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from modelhost.serve.app import create_app
from tests.component.inprocess_engines import InProcessBackend
from tests.conftest import ADMIN_TOKEN, auth, make_settings
from tests.pg import pg_url  # noqa: F401  (fixture)


def test_control_plane_on_postgres_survives_restart(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    settings = make_settings(tmp_path / "data", database_url=pg_url)
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg://")
    with TestClient(create_app(settings, backend=InProcessBackend())) as client:
        r = client.post("/v1/users", json={"username": "alice"}, headers=auth(ADMIN_TOKEN))
        assert r.status_code == 201
        alice = r.json()["token"]
        body = {
            "model_name": "m",
            "gpu": "CPU",
            "engine": "simulator",
            "settings": {"min_instances": 0, "max_instances": 1},
        }
        r = client.post("/deploy/llm", json=body, headers=auth(alice))
        assert r.status_code == 201, r.text
        deploy_id = r.json()["deploy_id"]
        assert client.post("/deploy/llm", json=body, headers=auth(alice)).status_code == 409
        # The partial unique index frees the name on delete, on PostgreSQL too.
        assert client.post(f"/deploy/{deploy_id}/stop", headers=auth(alice)).status_code == 200
    # A new server process on the same database: nothing lost.
    with TestClient(create_app(settings, backend=InProcessBackend())) as client:
        me = client.get("/v1/me", headers=auth(alice))
        assert me.status_code == 200 and me.json()["username"] == "alice"
        dep = client.get(f"/deploy/{deploy_id}", headers=auth(alice)).json()
        assert dep["status"] == "stopped" and dep["model_name"] == "alice/m"
        assert client.delete(f"/deploy/{deploy_id}", headers=auth(alice)).status_code == 200
        r = client.post("/deploy/llm", json=body, headers=auth(alice))
        assert r.status_code == 201
