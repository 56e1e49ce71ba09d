"""Users and API tokens, as in the API contract."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from typing import Any

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
