"""The SDK's wire behaviour against scripted HTTP answers (httpx.MockTransport, no sockets):
request shapes, error parsing, response unwrapping, streams."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from modelhost import Client, ModelhostAPIError, ModelhostConnectionError, ModelhostTimeoutError
from modelhost.client.sse import ChatDelta, iter_chat_deltas, iter_sse_data

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> Client:
    return Client("http://mh.test/", "mh_tok", transport=httpx.MockTransport(handler))


def _dep(status: str = "ready", **extra: object) -> dict[str, object]:
    return {
        "deploy_id": "d1",
        "model_name": "alice/tiny",
        "type": "llm",
        "status": status,
        "fail_reason": None,
        "created_at": "2026-11-21T10:00:00Z",
        "updated_at": "2026-11-21T10:00:01Z",
        "instances": {"running": 1, "pending": 0},
        "config": {"gpu": "CPU", "num_gpus": 1},
        "settings": {"min_instances": 1, "max_instances": 2},
        **extra,
    }


def test_sends_bearer_token_and_parses_me() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(
            200, json={"username": "alice", "is_admin": False, "gpu_limit": 4, "gpus_reserved": 2}
        )

    me = _client(handler).me()
    assert (me.username, me.is_admin, me.gpu_limit, me.gpus_reserved) == ("alice", False, 4, 2)
    assert seen[0].headers["authorization"] == "Bearer mh_tok"
    assert str(seen[0].url) == "http://mh.test/v1/me"


def test_create_llm_body_has_only_the_given_weights() -> None:
    bodies: list[dict[str, object]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        assert (req.method, req.url.path) == ("POST", "/deploy/llm")
        bodies.append(json.loads(req.content))
        return httpx.Response(201, json=_dep("pending"))

    c = _client(handler)
    dep = c.create_llm(
        "tiny",
        gpu="A100-80GB",
        num_gpus=2,
        hf={"repo": "org/m", "revision": None, "token": "hf_x"},
        engine_args=["--foo", "1"],
        settings={"min_instances": 0, "max_instances": 3},
    )
    c.create_llm("tiny2", local="/models/x.gguf", public=True)
    c.create_llm("tiny3", base_model="smollm2-135m-instruct")
    assert dep.status == "pending" and not dep.settled
    assert bodies[0] == {
        "model_name": "tiny",
        "gpu": "A100-80GB",
        "num_gpus": 2,
        "max_batch_size": 96,
        "engine": "auto",
        "engine_args": ["--foo", "1"],
        "hf": {"repo": "org/m", "token": "hf_x"},
        "settings": {"min_instances": 0, "max_instances": 3},
    }
    assert bodies[1]["local"] == {"path": "/models/x.gguf"} and bodies[1]["public"] is True
    assert "hf" not in bodies[1] and "public" not in bodies[2]
    assert bodies[2]["base_model"] == "smollm2-135m-instruct" and bodies[2]["gpu"] == "CPU"


def test_openai_style_error_becomes_api_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "message": "gpu: unknown type 'X'; known: CPU, A100-80GB",
                "type": "invalid_request_error",
                "param": "gpu",
                "code": "validation_error",
            }
        }
        return httpx.Response(422, json=body)

    with pytest.raises(ModelhostAPIError) as info:
        _client(handler).create_llm("tiny", gpu="X")
    err = info.value
    assert (err.status_code, err.code, err.param) == (422, "validation_error", "gpu")
    assert err.message.startswith("gpu: unknown type") and err.type == "invalid_request_error"
    assert "HTTP 422" in str(err)


@pytest.mark.parametrize(
    ("response", "code", "message", "param"),
    [
        (httpx.Response(400, json={"error": "bad adapter", "error_type": "validation"}),
         "validation", "bad adapter", None),
        (httpx.Response(422, json={"detail": [{"loc": ["body", "num_gpus"], "msg": "too big"}]}),
         None, "too big", "num_gpus"),
        (httpx.Response(404, json={"detail": "Not Found"}), None, "Not Found", None),
        (httpx.Response(502, text="<html>bad gateway</html>"), None, "<html>bad gateway</html>",
         None),
        (httpx.Response(500), None, "Internal Server Error", None),
    ],
)  # fmt: skip
def test_other_error_shapes(
    response: httpx.Response, code: str | None, message: str, param: str | None
) -> None:
    with pytest.raises(ModelhostAPIError) as info:
        _client(lambda req: response).get_deployment("d1")
    assert info.value.status_code == response.status_code
    assert (info.value.code, info.value.message, info.value.param) == (code, message, param)


def test_retry_after_is_parsed() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "queue full", "type": "x", "param": None, "code": "busy"}}
        return httpx.Response(429, json=body, headers={"Retry-After": "3"})

    with pytest.raises(ModelhostAPIError) as info:
        _client(handler).list_deployments()
    assert info.value.retry_after == 3.0


def test_connection_refused_names_the_url() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=req)

    with pytest.raises(ModelhostConnectionError) as info:
        _client(handler).me()
    assert info.value.url == "http://mh.test"
    assert "http://mh.test" in str(info.value) and "refused" in str(info.value)


def test_lists_accept_bare_and_wrapped_bodies() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        match req.url.path:
            case "/deploy/list":
                return httpx.Response(200, json=[_dep(), _dep("standby", deploy_id="d2")])
            case "/v1/users":
                return httpx.Response(200, json={"users": [{"username": "a", "gpu_limit": 4}]})
            case "/v1/api-tokens":
                tokens = [
                    {"token_id": "t1", "name": "ci", "created_at": "2023-11-14T22:13:20Z"},
                    # Older servers sent unix seconds; the SDK still reads them.
                    {"token_id": "t2", "name": "old", "created_at": 1700000000},
                ]
                return httpx.Response(200, json=tokens)
            case "/deploy/llm/gpu_availability":
                body = {"gpus": [{"gpu": "CPU", "total": 4, "available": 3, "usd_per_hour": 0}]}
                return httpx.Response(200, json=body)
            case "/v1/catalog/models":
                body = {"models": [{"name": "m", "description": "d", "available": False}]}
                return httpx.Response(200, json=body)
        return httpx.Response(404, json={"detail": "Not Found"})

    c = _client(handler)
    assert [d.deploy_id for d in c.list_deployments()] == ["d1", "d2"]
    assert c.list_users()[0].gpu_limit == 4
    tok, old = c.list_tokens()
    assert tok.token_id == "t1" and tok.created_at == datetime.fromtimestamp(1700000000, UTC)
    assert old.created_at == tok.created_at and tok.last_used_at is None
    assert c.gpu_availability()[0].available == 3
    assert c.catalog_models()[0].available is False


def test_list_filters_go_in_the_query() -> None:
    urls: list[httpx.URL] = []

    def handler(req: httpx.Request) -> httpx.Response:
        urls.append(req.url)
        return httpx.Response(200, json=[])

    c = _client(handler)
    c.list_deployments(status=["ready", "standby"], all=True)
    c.list_deployments(status="errored")
    c.list_deployments()
    assert urls[0].params["status"] == "ready,standby" and urls[0].params["all"] == "true"
    assert urls[1].params["status"] == "errored" and "all" not in urls[1].params
    assert not urls[2].params


def test_unknown_fields_are_kept() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_dep(autoscaling={"desired_replicas": 2, "reason": "x"}))

    dep = _client(handler).get_deployment("d1")
    assert dep.model_extra == {"autoscaling": {"desired_replicas": 2, "reason": "x"}}
    assert dep.full_name == "alice/tiny" and dep.instances.running == 1


def test_stop_start_update_fetch_the_object_when_only_an_id_comes_back() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path}")
        if req.method == "GET":
            return httpx.Response(200, json=_dep("stopped"))
        if req.method == "PUT":
            assert json.loads(req.content) == {"settings": {"max_instances": 3}}
            return httpx.Response(200, json=_dep("ready"))
        return httpx.Response(200, json={"deploy_id": "d1"})

    c = _client(handler)
    assert c.stop_deployment("d1").status == "stopped"
    assert c.update_deployment("d1", settings={"max_instances": 3}).status == "ready"
    assert c.delete_deployment("d1") == "d1"
    assert calls == [
        "POST /deploy/d1/stop",
        "GET /deploy/d1",
        "PUT /deploy/d1",
        "DELETE /deploy/d1",
    ]
    with pytest.raises(ValueError):
        c.update_deployment("d1")


def test_wait_until_settled_polls_until_the_status_settles() -> None:
    statuses = iter(["pending", "initializing", "initializing", "errored"])
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        status = next(statuses)
        return httpx.Response(
            200, json=_dep(status, fail_reason="boom" if status == "errored" else None)
        )

    dep = _client(handler).wait_until_settled(
        "d1", timeout=60, poll_interval=0, on_update=lambda d: seen.append(d.status)
    )
    assert dep.status == "errored" and dep.fail_reason == "boom"
    assert seen == ["pending", "initializing", "initializing", "errored"]


def test_wait_until_settled_times_out() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_dep("initializing"))

    with pytest.raises(ModelhostTimeoutError, match="still initializing"):
        _client(handler).wait_until_settled("d1", timeout=0, poll_interval=0)


def test_logs_and_follow_logs() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.params.get("follow") == "true":
            assert req.url.params["replica"] == "r1" and req.url.params["since"] == "1700000000.0"
            lines = [
                json.dumps({"ts": "2026-11-21T10:00:00Z", "replica": "r1", "line": "loading"}),
                "",
                "not json",
                json.dumps({"replica": "r1", "line": "ready"}),
            ]
            return httpx.Response(200, text="\n".join(lines) + "\n")
        assert req.url.params["limit"] == "5"
        return httpx.Response(200, json={"entries": [{"replica": "r1", "line": "hello"}]})

    c = _client(handler)
    assert [(e.replica, e.line) for e in c.logs("d1", limit=5)] == [("r1", "hello")]
    since = datetime.fromtimestamp(1700000000, UTC)
    got = list(c.follow_logs("d1", replica="r1", since=since))
    assert [e.line for e in got] == ["loading", "not json", "ready"]
    assert got[0].ts == datetime(2026, 11, 21, 10, 0, tzinfo=UTC) and got[1].replica is None


def test_sse_decoding() -> None:
    lines = [": keep-alive", "data: a", "data: b", "", "event: x", "data:c", "", "data: [DONE]", ""]
    assert list(iter_sse_data(lines)) == ["a\nb", "c"]
    assert list(iter_sse_data(["data: tail-without-blank-line"])) == ["tail-without-blank-line"]


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return "data: " + json.dumps({"choices": [{"delta": delta, "finish_reason": finish}]})


def test_chat_deltas_and_in_stream_error() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    usage_event = "data: " + json.dumps({"choices": [], "usage": usage})
    ok = [_chunk("Hel"), "", _chunk("lo"), "", _chunk(None, "stop"), "", usage_event, "",
          "data: [DONE]", ""]  # fmt: skip
    assert list(iter_chat_deltas(ok)) == [
        ChatDelta("Hel"),
        ChatDelta("lo"),
        ChatDelta("", finish_reason="stop"),
        ChatDelta("", usage=usage),
    ]
    err = {"error": {"message": "replica died", "type": "server_error", "code": "engine_error"}}
    broken = [_chunk("Hel"), "", "data: " + json.dumps(err), ""]
    it = iter_chat_deltas(broken)
    assert next(it).content == "Hel"
    with pytest.raises(ModelhostAPIError) as info:
        next(it)
    assert info.value.in_stream and info.value.code == "engine_error"


def test_chat_stream_request() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        assert req.url.path == "/v1/openai/chat/completions"
        assert body == {
            "model": "alice/tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 4,
            "seed": 7,
        }
        return httpx.Response(200, text=f"{_chunk('yo')}\n\ndata: [DONE]\n\n")

    c = _client(handler)
    out = c.chat_stream("alice/tiny", [{"role": "user", "content": "hi"}], max_tokens=4, seed=7)
    assert [d.content for d in out] == ["yo"]


def test_openai_client_points_at_the_openai_routes() -> None:
    oa = _client(lambda req: httpx.Response(200)).openai()
    assert str(oa.base_url).rstrip("/") == "http://mh.test/v1/openai"
    assert oa.api_key == "mh_tok"


class _BrokenStream(httpx.SyncByteStream):
    """Sends one SSE event, then the connection drops."""

    def __iter__(self) -> Iterator[bytes]:
        yield (_chunk("par") + "\n\n").encode()
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def test_a_dropped_stream_is_an_error_not_a_short_answer() -> None:
    c = _client(lambda req: httpx.Response(200, stream=_BrokenStream()))
    got: list[str] = []
    with pytest.raises(ModelhostConnectionError) as info:
        for delta in c.chat_stream("alice/tiny", [{"role": "user", "content": "hi"}]):
            got.append(delta.content)
    assert got == ["par"]
    assert str(info.value).startswith("connection to modelhost at http://mh.test failed")


def test_a_deployment_waiting_for_capacity_says_why() -> None:
    from modelhost.client.models import Deployment

    base = {"deploy_id": "d1", "model_name": "bob/m", "status": "pending"}
    starting = Deployment.model_validate(base)
    assert not starting.settled and starting.pending_reason is None
    waiting = Deployment.model_validate(
        {**base, "autoscaling": {"pending_reason": "no CPU slot free (2 of 2 in use)"}}
    )
    # Still unsettled: the replica starts by itself once a slot frees.
    assert not waiting.settled and waiting.pending_reason == "no CPU slot free (2 of 2 in use)"
