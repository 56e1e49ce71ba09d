"""The SDK's adapter calls and the `modelhost adapters` commands against scripted HTTP answers
(httpx.MockTransport, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelhost import Client

ADAPTER = {
    "adapter_id": "a1b2c3d4e5f60718",
    "name": "alice/french",
    "base": "alice/smol",
    "base_deploy_id": "d1",
    "source": {"local": {"path": "/srv/fr"}},
    "rank": 8,
    "target_modules": ["q_proj", "v_proj"],
    "public": False,
    "size_bytes": 937024,
    "created_at": "2026-11-22T01:00:00Z",
}


class Server:
    """Answers like the control plane's /v1/adapters routes and records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content) if req.content else None
        self.seen.append((req.method, req.url.path, body))
        if req.method == "POST":
            return httpx.Response(201, json=ADAPTER)
        if req.url.path == "/v1/adapters":
            return httpx.Response(200, json={"adapters": [ADAPTER]})
        if req.method == "DELETE":
            return httpx.Response(200, json={"adapter_id": ADAPTER["adapter_id"], "name": "x"})
        if req.url.path == "/v1/adapters/missing":
            return httpx.Response(404, json={"detail": {"code": "not_found", "message": "no"}})
        return httpx.Response(200, json=ADAPTER)


def test_sdk_adapter_calls() -> None:
    server = Server()
    mh = Client("http://mh.test", "tok", transport=httpx.MockTransport(server))
    a = mh.create_adapter("french", base="alice/smol", local="/srv/fr", public=True)
    assert (a.name, a.rank, a.target_modules) == ("alice/french", 8, ["q_proj", "v_proj"])
    mh.create_adapter("fr2", base="alice/smol", hf={"repo": "org/fr", "token": None})
    assert [a.adapter_id for a in mh.list_adapters()] == ["a1b2c3d4e5f60718"]
    assert mh.get_adapter("french").base == "alice/smol"
    assert mh.delete_adapter("french") == "a1b2c3d4e5f60718"
    assert server.seen[0] == (
        "POST",
        "/v1/adapters",
        {
            "name": "french",
            "base": "alice/smol",
            "source": {"local": {"path": "/srv/fr"}},
            "public": True,
        },
    )
    assert server.seen[1][2]["source"] == {"hf": {"repo": "org/fr"}}
    assert [s[:2] for s in server.seen[2:]] == [
        ("GET", "/v1/adapters"),
        ("GET", "/v1/adapters/french"),
        ("DELETE", "/v1/adapters/french"),
    ]
    with pytest.raises(ValueError):
        mh.create_adapter("x", base="alice/smol")


def test_cli_adapter_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelhost.cli import adapters as cli_adapters
    from modelhost.cli.main import app

    server = Server()

    def client() -> Client:
        return Client("http://mh.test", "tok", transport=httpx.MockTransport(server))

    monkeypatch.setattr(cli_adapters, "open_client", client)
    runner = CliRunner()
    r = runner.invoke(
        app, ["adapters", "create", "french", "--base", "alice/smol", "--local", "/x"]
    )
    assert r.exit_code == 0, r.output
    assert "alice/french" in r.output and "a1b2c3d4e5f60718" in r.output
    r = runner.invoke(app, ["adapters", "list"])
    assert r.exit_code == 0 and "alice/french" in r.output and "q,v" in r.output
    r = runner.invoke(app, ["adapters", "get", "french"])
    assert r.exit_code == 0 and json.loads(r.output)["rank"] == 8
    r = runner.invoke(app, ["adapters", "delete", "french"])
    assert r.exit_code == 0 and "Deleted" in r.output
    r = runner.invoke(app, ["adapters", "create", "x", "--base", "alice/smol"])
    assert r.exit_code != 0
