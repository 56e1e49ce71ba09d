"""The OpenAPI document declares the bearer scheme and, per route, the error responses the
route really gives in the error shape; a 405 says what is allowed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.component.live_app import Live, live_app
from tests.conftest import ADMIN_TOKEN, auth, make_settings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_app(make_settings(Path(tmp_path_factory.mktemp("openapi")) / "data")) as server:
        yield server


@pytest.fixture(scope="module")
def spec(live: Live) -> dict[str, Any]:
    r = live.client.get("/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def responses(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return dict(spec["paths"][path][method]["responses"])


def schema_of(response: dict[str, Any]) -> str:
    return str(response["content"]["application/json"]["schema"]["$ref"])


def test_the_bearer_scheme_is_declared_for_every_route(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["xi-api-key"]["in"] == "header"
    assert {"bearer": []} in spec["security"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert "401" in op["responses"], (method, path)
            assert "429" in op["responses"], (method, path)


def test_error_responses_use_the_error_shape(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert "HTTPValidationError" not in str(spec)
    for path, item in spec["paths"].items():
        for op in item.values():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    # LoRAX's routes answer in its shape; per-deployment OpenAI routes in OpenAI's.
                    lorax = path.startswith("/deployments/") and "/v1/" not in path
                    expected = "LoraxErrorResponse" if lorax else "/ErrorResponse"
                    assert expected in schema_of(response), (path, status)


ROUTES = [
    ("post", "/v1/openai/chat/completions", {"400", "401", "402", "404", "413", "429"}),
    ("post", "/deployments/{username}/{model_name}", {"401", "402", "404", "413", "422", "429"}),
    ("get", "/deployments/{username}/{model_name}/health", {"401", "404", "429"}),
    ("post", "/v1/users", {"401", "403", "409", "413", "422", "429"}),
    ("get", "/v1/users", {"401", "403", "429"}),
    ("delete", "/v1/users/{username}", {"401", "403", "404", "422", "429"}),
    ("get", "/v1/me", {"401", "429"}),
    ("post", "/v1/api-tokens", {"401", "409", "413", "422", "429"}),
    ("delete", "/v1/api-tokens/{token_id}", {"401", "404", "429"}),
    ("post", "/deploy/llm", {"401", "402", "403", "409", "413", "422", "429"}),
    ("get", "/deploy/list", {"401", "422", "429"}),
    ("get", "/deploy/{deploy_id}", {"401", "404", "429"}),
    ("put", "/deploy/{deploy_id}", {"401", "403", "404", "413", "422", "429"}),
    ("delete", "/deploy/{deploy_id}", {"401", "404", "429"}),
    ("post", "/deploy/{deploy_id}/start", {"401", "402", "403", "404", "429"}),
    ("put", "/v1/me/spending-limit", {"401", "413", "422", "429"}),
    ("put", "/v1/users/{username}/spending-limit", {"401", "403", "404", "413", "422", "429"}),
    ("put", "/v1/users/{username}", {"401", "403", "404", "413", "422", "429"}),
    ("get", "/deploy/{deploy_id}/events", {"401", "404", "422", "429"}),
    ("post", "/v1/adapters", {"401", "403", "404", "409", "413", "422", "429"}),
    ("get", "/v1/adapters/{name}", {"401", "404", "429"}),
]


@pytest.mark.parametrize(
    ("method", "path", "errors"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
def test_each_route_declares_its_errors(
    spec: dict[str, Any], method: str, path: str, errors: set[str]
) -> None:
    declared = {s for s in responses(spec, method, path) if s.startswith("4")}
    assert declared == errors


def test_declared_errors_are_real(live: Live) -> None:
    """A sample of the declared answers, given as declared."""
    c = live.client
    alice = {"Authorization": f"Bearer {live.new_user('alice')}"}
    assert c.get("/v1/users", headers=alice).status_code == 403
    assert c.delete("/v1/users/alice", headers=alice).status_code == 403
    assert c.delete("/v1/users/nobody", headers=auth(ADMIN_TOKEN)).status_code == 404
    assert c.get("/deploy/list?status=nope", headers=alice).status_code == 422
    assert c.post("/deploy/d0/start", headers=alice).status_code == 404
    assert c.get("/deploy/d0/events?limit=0", headers=alice).status_code in (404, 422)
    assert c.post("/v1/api-tokens", json={"name": "default"}, headers=alice).status_code == 409


ALLOW = [
    ("PATCH", "/deploy/d0123", {"GET", "PUT", "DELETE"}),
    ("POST", "/v1/me", {"GET"}),
    ("DELETE", "/v1/api-tokens", {"GET", "POST"}),
    ("PUT", "/deploy/llm/gpu_availability", {"GET"}),
    ("GET", "/v1/openai/chat/completions", {"POST"}),
]


@pytest.mark.parametrize(
    ("method", "path", "allowed"), ALLOW, ids=[f"{m} {p}" for m, p, _ in ALLOW]
)
def test_405_names_the_allowed_methods(
    live: Live, method: str, path: str, allowed: set[str]
) -> None:
    r = live.client.request(method, path, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    named = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed <= named and method not in named


def test_framework_errors_under_loraxs_base_url_use_loraxs_shape(live: Live) -> None:
    # No such route under the base URL, and a method the route does not serve.
    missing = live.client.get("/deployments/admin/x/nope", headers=auth(ADMIN_TOKEN))
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found", "error_type": "not_found"}
    wrong = live.client.get("/deployments/admin/x/generate", headers=auth(ADMIN_TOKEN))
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error_type"] == "method_not_allowed"
    # The OpenAI routes under the same base keep OpenAI's shape.
    openai = live.client.get("/deployments/admin/x/v1/completions", headers=auth(ADMIN_TOKEN))
    assert openai.status_code == 405 and openai.json()["error"]["code"] == "method_not_allowed"
