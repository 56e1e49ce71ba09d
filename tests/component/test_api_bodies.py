"""Request bodies of the control plane: anything that is not a JSON object is a 422 with the
error JSON, and no body over `max_body_bytes` is read whole (413) - over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.component.live_app import Live, live_app, raw_exchange
from tests.conftest import ADMIN_TOKEN, auth, make_settings

LIMIT = 256 * 1024
ROUTES = [
    ("POST", "/deploy/llm"),
    ("POST", "/v1/users"),
    ("POST", "/v1/adapters"),
    ("POST", "/v1/api-tokens"),
    ("PUT", "/deploy/d0123456789abcdef"),
]
NOT_AN_OBJECT = [
    ("nested", "application/json", b"[" * 200_000),
    ("nested objects", "application/json", b'{"a":' * 50_000),
    ("invalid", "application/json", b'{"model_name": '),
    ("not utf-8", "application/json", b'{"name": "\xff\xfe"}'),
    ("array", "application/json", b"[]"),
    ("empty", "application/json", b""),
    ("text", "text/plain", b'{"name": "x"}'),
    ("form", "application/x-www-form-urlencoded", b"name=x"),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = Path(tmp_path_factory.mktemp("bodies")) / "data"
    with live_app(make_settings(data, max_body_bytes=LIMIT)) as server:
        yield server


def is_error(body: bytes, code: str) -> dict[str, object]:
    err = json.loads(body)["error"]
    assert err["code"] == code and err["message"] and err["type"] == "invalid_request_error"
    assert "Traceback" not in err["message"]
    return dict(err)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[r[1] for r in ROUTES])
@pytest.mark.parametrize(
    ("content_type", "raw"), [c[1:] for c in NOT_AN_OBJECT], ids=[c[0] for c in NOT_AN_OBJECT]
)
def test_a_body_that_is_not_a_json_object_is_422(
    live: Live, method: str, path: str, content_type: str, raw: bytes
) -> None:
    headers = {**auth(ADMIN_TOKEN), "content-type": content_type}
    r = live.client.request(method, path, content=raw, headers=headers)
    assert r.status_code == 422, r.text
    is_error(r.content, "validation_error")


def test_the_messages_say_what_is_wrong(live: Live) -> None:
    def message(raw: bytes, content_type: str = "application/json") -> str:
        headers = {**auth(ADMIN_TOKEN), "content-type": content_type}
        r = live.client.post("/v1/api-tokens", content=raw, headers=headers)
        return str(r.json()["error"]["message"])

    assert "nested too deeply" in message(b"[" * 200_000)
    assert "not valid JSON" in message(b'{"name": ')
    assert "JSON object" in message(b'{"name": "x"}', "text/plain")
    # And the server is fine afterwards.
    assert live.client.get("/v1/me", headers=auth(ADMIN_TOKEN)).status_code == 200


def post_head(live: Live, path: str, framing: str) -> str:
    return (
        f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {ADMIN_TOKEN}\n"
        f"Content-Type: application/json\n{framing}\n"
    )


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[r[1] for r in ROUTES])
def test_a_declared_length_over_the_cap_is_413_before_the_body(
    live: Live, method: str, path: str
) -> None:
    # 24 MiB announced, not one byte sent: the answer comes without waiting for the body.
    head = post_head(live, path, f"Content-Length: {24 * 1024 * 1024}").replace("POST", method, 1)
    status, _, body = raw_exchange(live.url, head, [])
    assert status == 413
    is_error(body, "payload_too_large")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/api-tokens",
        # The gateway's inference routes count a chunked body as it arrives too.
        "/v1/openai/chat/completions",
        "/deployments/admin/none/generate",
        "/deployments/admin/none",
    ],
)
def test_a_chunked_body_is_cut_at_the_cap(live: Live, path: str) -> None:
    # Chunks past the cap and no final chunk: the server must answer while the body is
    # still "arriving", so it cannot have waited to read it all.
    chunk = b"x" * 8192
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (LIMIT // len(chunk) + 1)
    head = post_head(live, path, "Transfer-Encoding: chunked")
    status, _, body = raw_exchange(live.url, head, parts)
    assert status == 413
    if path.startswith("/deployments/"):
        assert json.loads(body)["error_type"] == "payload_too_large"
    else:
        is_error(body, "payload_too_large")


def test_bodies_under_the_cap_reach_the_route(live: Live) -> None:
    h = auth(ADMIN_TOKEN)
    padded = {"name": "t" * 100, "pad": "x" * (LIMIT - 200)}
    r = live.client.post("/v1/api-tokens", json=padded, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "pad"
    # Chunked (a generator body) and under the cap: read, replayed to the route, answered.
    r = live.client.post(
        "/v1/api-tokens",
        content=iter([b'{"name": ', b'"chunked"}']),
        headers={**h, "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "chunked"


def test_the_gateway_keeps_its_own_cap(live: Live) -> None:
    body = {"model": "admin/none", "prompt": "x" * (LIMIT + 1)}
    r = live.client.post("/v1/openai/completions", json=body, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 413
    is_error(r.content, "payload_too_large")
    r = live.client.post(
        "/deployments/admin/none/generate",
        json={"inputs": "x" * (LIMIT + 1)},
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
