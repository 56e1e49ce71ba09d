"""GET /metrics names every tenant's deployments and adapters: admins only, unless the
operator opens it for a scraper."""

from __future__ import annotations

from pathlib import Path

from tests.component.live_app import live_app
from tests.conftest import ADMIN_TOKEN, auth, make_settings


def test_metrics_need_an_admin_token(tmp_path: Path) -> None:
    with live_app(make_settings(tmp_path / "data")) as live:
        alice = live.new_user("alice")
        body = {"model_name": "secret-project", "gpu": "CPU", "engine": "simulator"}
        body["settings"] = {"min_instances": 0, "max_instances": 1}
        assert live.client.post("/deploy/llm", json=body, headers=auth(alice)).status_code == 201
        r = live.client.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = live.client.get("/metrics", headers=auth("mh_wrong"))
        assert r.status_code == 401
        r = live.client.get("/metrics", headers=auth(live.new_user("bob")))
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
        assert "secret-project" not in r.text
        r = live.client.get("/metrics", headers=auth(ADMIN_TOKEN))
        assert r.status_code == 200 and "modelhost_loop_errors" in r.text
        assert r.headers["content-type"].startswith("text/plain")


def test_an_operator_can_open_metrics_to_a_scraper(tmp_path: Path) -> None:
    with live_app(make_settings(tmp_path / "data", metrics_public=True)) as live:
        r = live.client.get("/metrics")
        assert r.status_code == 200 and "modelhost_loop_errors" in r.text
