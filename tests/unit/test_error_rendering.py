"""The one renderer of errors (modelhost.web.errors): each kind of failure as its HTTP status,
OpenAI `type`, `code` and `Retry-After`; LoRAX's shape and words; the SSE error events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lorax.errors import (
    GenerationError,
    IncompleteGenerationError,
    NotFoundError,
    OverloadedError,
    ValidationError,
    parse_error,
)

from modelhost.domain.autoscaling import SettingsError
from modelhost.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    Kind,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    QuotaExceeded,
    ServiceError,
    ShuttingDown,
    Unauthorized,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from modelhost.web import errors as web_errors
from modelhost.web.auth_guard import AuthThrottled
from modelhost.web.errors import (
    HTTP,
    as_service_error,
    payload,
    render,
    shape_for_path,
    sse_error,
    sse_payload,
    status_of,
)

# class, status, OpenAI type, code: the API contract of docs/api.md.
CONTRACT: list[tuple[type[ServiceError], int, str, str]] = [
    (ServiceError, 500, "server_error", "internal_error"),
    (InvalidRequest, 400, "invalid_request_error", "invalid_request"),
    (Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (Forbidden, 403, "permission_error", "forbidden"),
    (QuotaExceeded, 403, "permission_error", "gpu_quota_exceeded"),
    (NotFound, 404, "not_found_error", "not_found"),
    (Conflict, 409, "conflict_error", "conflict"),
    (PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
    (ValidationFailed, 422, "invalid_request_error", "validation_error"),
    (QueueFull, 429, "rate_limit_error", "queue_full"),
    (AuthThrottled, 429, "rate_limit_error", "auth_throttled"),
    (Unavailable, 503, "server_error", "unavailable"),
    (ShuttingDown, 503, "server_error", "shutting_down"),
    (UpstreamTimeout, 504, "server_error", "engine_timeout"),
    (UpstreamFailed, 502, "server_error", "replica_failed"),
]


def body_of(response: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(bytes(response.body))
    return parsed


def event(raw: bytes) -> dict[str, Any]:
    text = raw.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    parsed: dict[str, Any] = json.loads(text[len("data: ") :])
    return parsed


def test_every_kind_has_an_http_answer() -> None:
    assert set(HTTP) == set(Kind)


def test_the_hierarchy_knows_no_http() -> None:
    for cls, *_ in CONTRACT:
        assert not hasattr(cls, "status_code") and not hasattr(cls, "error_type")


@pytest.mark.parametrize(
    ("cls", "status", "type_", "code"), CONTRACT, ids=[c[0].__name__ for c in CONTRACT]
)
def test_each_kind_renders_its_status_type_and_code(
    cls: type[ServiceError], status: int, type_: str, code: str
) -> None:
    exc = cls("what went wrong", param="field")
    response = render(exc)
    assert response.status_code == status == status_of(exc)
    assert body_of(response) == {
        "error": {"message": "what went wrong", "type": type_, "param": "field", "code": code}
    }
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(("seconds", "header"), [(0.2, "1"), (1, "1"), (2.1, "3"), (5, "5")])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, header: str) -> None:
    for shape in ("openai", "lorax"):
        response = render(QueueFull("full", retry_after=seconds), shape)  # type: ignore[arg-type]
        assert response.headers["retry-after"] == header


def test_a_code_given_at_the_raise_site_wins() -> None:
    exc = Unavailable("stopped", code="deployment_stopped", retry_after=5)
    assert body_of(render(exc))["error"]["code"] == "deployment_stopped"
    assert payload(exc, "lorax") == (503, {"error": "stopped", "error_type": "deployment_stopped"})


def test_an_engine_check_without_a_code_keeps_a_null_code() -> None:
    # gateway/validate.py passes the engine's code on, null where the engine gives none.
    exc = InvalidRequest("bad", param="temperature")
    exc.code = None
    assert body_of(render(exc))["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }


# ---- LoRAX's shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "word", "raised"),
    [
        (InvalidRequest("bad body"), 422, "validation", ValidationError),
        (QueueFull("full", retry_after=2), 429, "overloaded", OverloadedError),
        (NotFound("no such model", code="model_not_found"), 404, "model_not_found", NotFoundError),
        (NotFound("no adapter", code="adapter_not_found"), 404, "adapter_not_found", NotFoundError),
        (Unauthorized("no token"), 401, "invalid_api_key", None),
        (AuthThrottled("slow down", retry_after=3), 429, "auth_throttled", None),
        (PayloadTooLarge("too big"), 413, "payload_too_large", None),
        (Unavailable("stopped", code="deployment_stopped"), 503, "deployment_stopped", None),
        (ShuttingDown("bye", retry_after=5), 503, "shutting_down", None),
        (UpstreamTimeout("slow"), 504, "engine_timeout", None),
        (UpstreamFailed("died"), 502, "replica_failed", None),
        (ServiceError("internal server error"), 500, "internal_error", None),
    ],
)
def test_lorax_shape_uses_loraxs_words_else_our_code(
    exc: ServiceError, status: int, word: str, raised: type[Exception] | None
) -> None:
    response = render(exc, "lorax")
    body = body_of(response)
    assert response.status_code == status
    assert body == {"error": exc.message, "error_type": word}
    if raised is not None:
        assert isinstance(parse_error(status, body), raised)
    if exc.retry_after is not None:
        assert response.headers["retry-after"] == str(int(exc.retry_after))


# ---- SSE error events ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", [UpstreamFailed("replica r1 died"), ShuttingDown("bye")])
def test_a_stream_cut_short_is_loraxs_incomplete_generation(cut: ServiceError) -> None:
    lorax = event(sse_error(cut, "lorax"))
    assert lorax == {"error": cut.message, "error_type": "incomplete_generation"}
    assert isinstance(parse_error(200, lorax), IncompleteGenerationError)
    openai = event(sse_error(cut, "openai"))
    assert openai == {
        "error": {"message": cut.message, "type": "server_error", "param": None, "code": cut.code}
    }


def test_other_stream_errors_keep_their_code_or_say_error() -> None:
    stopped = sse_payload(Unavailable("stopped", code="deployment_stopped"), "lorax")
    assert stopped == {"error": "stopped", "error_type": "deployment_stopped"}
    assert not isinstance(parse_error(503, stopped), GenerationError)
    nameless = ServiceError("odd")
    nameless.code = None
    assert sse_payload(nameless, "lorax") == {"error": "odd", "error_type": "error"}


def test_the_openai_event_carries_the_whole_error_object() -> None:
    exc = QueueFull("full", param="model")
    assert event(sse_error(exc, "openai")) == body_of(render(exc))


# ---- which shape a path answers in ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/deployments/alice/m", "lorax"),
        ("/deployments/alice/m/generate", "lorax"),
        ("/deployments/alice/m/generate_stream", "lorax"),
        ("/deployments/alice/m/health", "lorax"),
        ("/deployments/alice/m/nope", "lorax"),
        ("/deployments/alice/v1/generate", "lorax"),  # a model named v1
        ("/deployments/alice/m/v1/chat/completions", "openai"),
        ("/deployments/alice/m/v1/completions", "openai"),
        ("/v1/chat/completions", "openai"),
        ("/v1/openai/completions", "openai"),
        ("/deploy/llm", "openai"),
        ("/readyz", "openai"),
    ],
)
def test_shape_for_path(path: str, shape: str) -> None:
    assert shape_for_path(path) == shape


# ---- families outside the hierarchy --------------------------------------------------------


def test_a_settings_error_is_a_422_naming_the_setting() -> None:
    mapped = as_service_error(SettingsError("max_instances", "must be an integer"))
    assert isinstance(mapped, ValidationFailed)
    assert body_of(render(mapped)) == {
        "error": {
            "message": "settings.max_instances: must be an integer",
            "type": "invalid_request_error",
            "param": "settings.max_instances",
            "code": "validation_error",
        }
    }
    assert as_service_error(ValueError("other")) is None


# ---- the handlers installed on an app ------------------------------------------------------


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    web_errors.install(app)

    @app.get("/boom/{what}")
    @app.get("/deployments/{user}/{model}/boom/{what}")
    async def boom(what: str) -> None:
        if what == "settings":
            raise SettingsError("cooldown_s", "must be a number")
        if what == "full":
            raise QueueFull("queue full", retry_after=1.5)
        raise RuntimeError("secret internals")

    return TestClient(app, raise_server_exceptions=False)


def test_installed_handlers_render_in_the_routes_shape(client: TestClient) -> None:
    r = client.get("/boom/full")
    assert (r.status_code, r.headers["retry-after"]) == (429, "2")
    assert r.json()["error"]["code"] == "queue_full"
    r = client.get("/deployments/a/m/boom/full")
    assert r.status_code == 429 and r.json() == {"error": "queue full", "error_type": "overloaded"}
    r = client.get("/boom/settings")
    assert r.status_code == 422 and r.json()["error"]["param"] == "settings.cooldown_s"


def test_unexpected_errors_are_a_500_without_internals(client: TestClient) -> None:
    r = client.get("/boom/crash")
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    r = client.get("/deployments/a/m/boom/crash")
    assert r.json() == {"error": "internal server error", "error_type": "internal_error"}


def test_framework_errors_in_each_shape(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"] == {
        "message": "Not Found",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    r = client.get("/deployments/a/m/nowhere")
    assert r.json() == {"error": "Not Found", "error_type": "not_found"}
    r = client.post("/boom/full")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert r.json()["error"]["code"] == "method_not_allowed"
