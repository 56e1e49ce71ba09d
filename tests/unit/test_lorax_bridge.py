"""LoRAX requests and answers translated to and from OpenAI's /v1/completions (vLLM's), as pure
functions and the stateful stream translator, table-tested."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lorax.types import Response as LoraxResponse
from lorax.types import StreamResponse

from modelhost.errors import InvalidRequest, UpstreamFailed
from modelhost.gateway import lorax_bridge as bridge
from modelhost.gateway.lorax_bridge import LoraxStream, lorax_call


def call(parameters: dict[str, Any] | None = None, route: str = "/generate", **body: Any):  # type: ignore[no-untyped-def]
    return lorax_call(route, {"inputs": "Hello there", "parameters": parameters, **body})


REQUESTS = [
    ("greedy by default", {}, {"temperature": 0.0}),
    ("max_new_tokens", {"max_new_tokens": 7}, {"max_tokens": 7, "temperature": 0.0}),
    ("do_sample", {"do_sample": True}, {"temperature": 1.0}),
    ("a warper samples", {"top_k": 4}, {"temperature": 1.0, "top_k": 4}),
    ("top_p of 1 is neutral", {"top_p": 1.0}, {"temperature": 0.0, "top_p": 1.0}),
    ("temperature", {"temperature": 0.3}, {"temperature": 0.3}),
    ("seed", {"seed": 5}, {"seed": 5, "temperature": 0.0}),
    ("stop", {"stop": ["\n"]}, {"stop": ["\n"], "temperature": 0.0}),
    ("empty stop", {"stop": []}, {"temperature": 0.0}),
    ("ignore_eos_token", {"ignore_eos_token": True}, {"ignore_eos": True, "temperature": 0.0}),
    (
        "penalties",
        {"repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5},
        {
            "repetition_penalty": 1.2,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "temperature": 0.0,
        },
    ),
    (
        "details ask for token ids and logprobs",
        {"details": True},
        {"logprobs": 0, "return_token_ids": True, "temperature": 0.0},
    ),
    ("ignored here", {"api_token": "x", "return_full_text": True}, {"temperature": 0.0}),
]


@pytest.mark.parametrize(
    ("params", "expected"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_requests(params: dict[str, Any], expected: dict[str, Any]) -> None:
    body = bridge.to_completion(call(params), None, context_length=None)
    max_tokens = expected.pop("max_tokens", bridge.DEFAULT_MAX_NEW_TOKENS)
    assert body == {"prompt": "Hello there", "max_tokens": max_tokens, **expected}


def test_model_stream_and_default_length() -> None:
    body = bridge.to_completion(call({"max_new_tokens": 3}, "/generate_stream"), "a-1", 100)
    assert body["model"] == "a-1" and body["max_tokens"] == 3
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["logprobs"] == 0 and body["return_token_ids"] is True
    # Without max_new_tokens: the replica's context (vLLM clamps to the room left), capped.
    assert bridge.to_completion(call(), None, 100)["max_tokens"] == 100
    assert bridge.to_completion(call(), None, 10**6)["max_tokens"] == bridge.DEFAULT_MAX_NEW_TOKENS
    # The compat route streams when asked.
    compat = call(None, "/", stream=True)
    assert compat.stream and not compat.as_list
    assert call(None, "/").as_list and not call(None, "/generate").as_list


def test_chat_template_is_refused_naming_it() -> None:
    with pytest.raises(InvalidRequest) as exc:
        bridge.to_completion(call({"apply_chat_template": True}), None, None)
    assert exc.value.param == "apply_chat_template"


FINISH = [
    ("length", None, "length"),
    ("stop", None, "eos_token"),
    ("stop", "\n", "stop_sequence"),
    ("stop", 128009, "stop_sequence"),
    (None, None, "eos_token"),
]


@pytest.mark.parametrize(("reason", "stop_reason", "lorax"), FINISH)
def test_finish_reasons(reason: str | None, stop_reason: object, lorax: str) -> None:
    assert bridge.finish_reason(reason, stop_reason) == lorax


def answer(text: str, ids: list[int] | None = None, reason: str = "length") -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": reason}
    if ids is not None:
        choice["token_ids"] = ids
        choice["logprobs"] = {
            "tokens": [f"<{i}>" for i in ids],
            "token_logprobs": [-0.25] * len(ids),
        }
    usage = {"prompt_tokens": 2, "completion_tokens": len(ids or []) or 3}
    return {"model": "m", "choices": [choice], "usage": usage}


def test_whole_answers() -> None:
    assert bridge.from_completion(call(), answer(" hi")) == {"generated_text": " hi"}
    full = bridge.from_completion(call({"return_full_text": True}), answer(" hi"))
    assert full == {"generated_text": "Hello there hi"}
    out = bridge.from_completion(
        call({"details": True, "seed": 3}), answer("<5><2>", [5, 2], reason="stop")
    )
    details = out["details"]
    assert details["finish_reason"] == "eos_token" and details["seed"] == 3
    assert details["prompt_tokens"] == 2 and details["generated_tokens"] == 2
    assert [(t["id"], t["text"], t["logprob"]) for t in details["tokens"]] == [
        (5, "<5>", -0.25),
        (2, "<2>", -0.25),
    ]
    # LoRAX's own client reads it.
    LoraxResponse(**out)


def test_whole_answer_bytes_and_errors() -> None:
    status, data = bridge.lorax_answer(call(None, "/"), 200, json.dumps(answer("x")).encode())
    assert status == 200 and json.loads(data) == [{"generated_text": "x"}]
    with pytest.raises(UpstreamFailed):
        bridge.lorax_answer(call(), 200, b"[]")
    with pytest.raises(UpstreamFailed):
        bridge.lorax_answer(call(), 200, b'{"choices": []}')


ERRORS = [
    (400, {"error": {"message": "too long", "code": 400}}, 422, "validation", "too long"),
    (404, {"error": {"message": "no model"}}, 404, "not_found", "no model"),
    (503, {"message": "busy"}, 503, "overloaded", "busy"),
    (500, None, 500, "generation", "the engine refused the request"),
]


@pytest.mark.parametrize(("status", "body", "out_status", "word", "message"), ERRORS)
def test_errors(status: int, body: object, out_status: int, word: str, message: str) -> None:
    raw = b"" if body is None else json.dumps(body).encode()
    got_status, data = bridge.lorax_answer(call(), status, raw)
    assert got_status == out_status
    assert json.loads(data) == {"error": message, "error_type": word}


# ---- streams ----------------------------------------------------------------------------------


def sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def chunk(text: str, ids: list[int], reason: str | None = None, **extra: Any) -> bytes:
    choice = {
        "index": 0,
        "text": text,
        "token_ids": ids,
        "logprobs": {
            "tokens": [text] if len(ids) == 1 else [],
            "token_logprobs": [-1.0] * len(ids),
        },
        "finish_reason": reason,
        "stop_reason": None,
        **extra,
    }
    return sse({"choices": [choice]})


USAGE = sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


def events(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[5:]) for e in data.split(b"\n\n") if e.startswith(b"data:")]


def run(stream: LoraxStream, raw: bytes, piece: int) -> bytes:
    out = b"".join(stream.feed(raw[i : i + piece]) for i in range(0, len(raw), piece))
    return out + stream.end()


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_stream_in_any_chunking(piece: int) -> None:
    raw = (
        chunk(" a", [10], prompt_token_ids=[1, 2, 3, 4])
        + chunk(" b", [11])
        + chunk("", [2], "stop")
        + USAGE
        + DONE
    )
    out = events(run(LoraxStream(call({"seed": 1}, "/generate_stream")), raw, piece))
    assert [e["token"]["id"] for e in out] == [10, 11, 2]
    assert [e["generated_text"] for e in out] == [None, None, " a b"]
    assert out[-1]["details"] == {
        "finish_reason": "eos_token",
        "prompt_tokens": 4,
        "generated_tokens": 3,
        "seed": 1,
    }
    assert out[-1]["token"]["special"] is True and out[0]["token"]["special"] is False
    for e in out:
        StreamResponse(**e)


def test_stream_without_usage_ends_at_done_with_its_own_counts() -> None:
    raw = chunk(" a", [10], prompt_token_ids=[1, 2]) + chunk(" b", [11], "length") + DONE
    out = events(run(LoraxStream(call({"return_full_text": True}, "/")), raw, 10_000))
    assert out[-1]["generated_text"] == "Hello there a b"
    assert out[-1]["details"]["prompt_tokens"] == 2
    assert out[-1]["details"]["generated_tokens"] == 2
    assert out[-1]["details"]["finish_reason"] == "length"


def test_stream_text_held_back_goes_with_a_later_token() -> None:
    """Text vLLM releases late (a stop sequence that might match) and tokens that come several
    in one chunk: the tokens' texts still add up to the whole text."""
    raw = (
        chunk("", [10])
        + chunk(" ab", [11])
        + chunk("", [], None)
        + chunk(" cd", [12, 13])
        + chunk("!", [14], "stop", stop_reason="!!")
        + USAGE
    )
    out = events(run(LoraxStream(call(None, "/generate_stream")), raw, 10_000))
    texts = [e["token"]["text"] for e in out]
    assert texts == ["", " ab", "", " cd", "!"]
    assert out[-1]["generated_text"] == "".join(texts)
    assert out[-1]["details"]["finish_reason"] == "stop_sequence"
    assert out[-1]["token"]["special"] is False


def test_stream_errors() -> None:
    failed = sse({"error": {"message": "engine died", "code": 500}}) + DONE
    out = events(run(LoraxStream(call(None, "/generate_stream")), chunk(" a", [1]) + failed, 5))
    assert out[-1] == {"error": "engine died", "error_type": "generation"}
    cut = events(run(LoraxStream(call(None, "/generate_stream")), chunk(" a", [1]), 5))
    assert cut[-1]["error_type"] == "incomplete_generation"
    early_done = events(run(LoraxStream(call(None, "/generate_stream")), DONE, 5))
    assert [e["error_type"] for e in early_done] == ["incomplete_generation"]


# ---- OpenAI answers of an adapter ------------------------------------------------------------


def test_model_renamed_in_whole_and_streamed_answers() -> None:
    assert json.loads(bridge.rename_model(b'{"model": "a-1", "x": 1}', "a-1", "alice/fr")) == {
        "model": "alice/fr",
        "x": 1,
    }
    assert bridge.rename_model(b'{"model": "other"}', "a-1", "alice/fr") == b'{"model": "other"}'
    assert bridge.rename_model(b"not json", "a-1", "alice/fr") == b"not json"
    stream = bridge.RenameModelStream("a-1", "alice/fr")
    raw = sse({"model": "a-1", "choices": []}) + DONE
    out = b"".join(stream.feed(raw[i : i + 3]) for i in range(0, len(raw), 3)) + stream.end()
    parts = [p for p in out.split(b"\n\n") if p]
    assert json.loads(parts[0][6:])["model"] == "alice/fr" and parts[1] == b"data: [DONE]"
