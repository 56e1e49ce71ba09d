"""LoRAX's API for engines that have none of their own (vLLM): the gateway translates.

A LoRAX request (`/generate`, `/generate_stream`, or the compat route `/`) for a replica whose
engine speaks only OpenAI's API becomes a `/v1/completions` request, and the answer comes back
in LoRAX's shape: `{"generated_text", "details"}` (a list of one for the compat route), or
LoRAX's SSE token events for a stream. The choice is made per replica (after admission), since
a rolling update may mix engines in one deployment.

What the translation asks of vLLM and gives back:

- `inputs` -> `prompt`; `parameters.adapter_id` -> `model` (the adapter's lora name; the base
  when absent); sampling follows TGI's rule (greedy unless `do_sample` or a warper is set),
  as the builtin engine does; `max_new_tokens` -> `max_tokens`, or when absent the room left
  in the context, capped like the builtin engine (`DEFAULT_MAX_NEW_TOKENS`);
  `ignore_eos_token` -> `ignore_eos`; `stop`, `seed`, `top_k`, `top_p`, `repetition_penalty`,
  `presence_penalty`, `frequency_penalty` as they are; `return_full_text` puts the prompt
  back in front of the answer here.
- `details` (and every stream): `logprobs: 0` and `return_token_ids: true`, so each token has
  its id and log-probability; streams ask `stream_options.include_usage` for the counts.
- What OpenAI's answer cannot give: `prefill` is always empty (`decoder_input_details` is
  refused before, as on the builtin engine); `special` is true only for the end-of-sequence
  token (an empty token ending the sequence with `eos_token`); `seed` is the request's own;
  a token's `text` in a stream is the text vLLM released with it (text held back while a stop
  sequence might match goes out with a later token), so the tokens' texts always add up to
  `generated_text`.
- Parameters the builtin engine refuses are refused before (gateway/validate.py), with the
  same 422 `validation`; `apply_chat_template` is refused here for these engines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from modelhost.errors import InvalidRequest, UpstreamFailed
from modelhost.web.errors import (
    LORAX_INCOMPLETE,
    LORAX_OVERLOADED,
    LORAX_VALIDATION,
    lorax_body,
)

# Engines that serve OpenAI's routes only: the gateway speaks LoRAX for them.
ENGINES_WITHOUT_LORAX = frozenset({"vllm"})
# The builtin engine's cap on an answer whose length the request leaves open
# (engine/server.py DEFAULT_MAX_TOKENS_CAP).
DEFAULT_MAX_NEW_TOKENS = 4096
COMPLETIONS_PATH = "/v1/completions"

Route = Literal["generate", "generate_stream", "compat"]
_ROUTES: dict[str, Route] = {
    "/generate": "generate",
    "/generate_stream": "generate_stream",
    "/": "compat",
}
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def speaks_lorax(engine: str) -> bool:
    """Whether replicas of `engine` serve LoRAX's routes themselves."""
    return engine not in ENGINES_WITHOUT_LORAX


def is_lorax_path(path: str) -> bool:
    return path in _ROUTES


@dataclass(frozen=True)
class LoraxCall:
    """One LoRAX request, as the translation needs it (the body passed the engine's checks)."""

    body: dict[str, Any]
    route: Route

    @property
    def parameters(self) -> dict[str, Any]:
        params = self.body.get("parameters")
        return params if isinstance(params, dict) else {}

    @property
    def stream(self) -> bool:
        if self.route == "compat":
            return self.body.get("stream") is True
        return self.route == "generate_stream"

    @property
    def as_list(self) -> bool:
        """The compat route answers a non-streaming request with a list of one object."""
        return self.route == "compat" and not self.stream

    @property
    def details(self) -> bool:
        return bool(self.parameters.get("details"))

    @property
    def prefix(self) -> str:
        """What goes in front of the generated text (the prompt, for `return_full_text`)."""
        return str(self.body["inputs"]) if self.parameters.get("return_full_text") else ""

    @property
    def seed(self) -> int | None:
        seed = self.parameters.get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def needs_context_length(self) -> bool:
        """No `max_new_tokens`: the default depends on the replica's context length."""
        return self.parameters.get("max_new_tokens") is None


def lorax_call(path: str, body: dict[str, Any]) -> LoraxCall:
    return LoraxCall(body, _ROUTES[path])


def _temperature(p: dict[str, Any]) -> float:
    """TGI's rule, as the builtin engine applies it: sampling when `do_sample` is set or any
    warper is non-neutral; greedy (temperature 0) otherwise."""
    temperature, top_p = p.get("temperature"), p.get("top_p")
    warpers = (
        (temperature is not None and temperature != 1.0)
        or p.get("top_k") is not None
        or (top_p is not None and top_p < 1.0)
    )
    if not (p.get("do_sample") or warpers):
        return 0.0
    return 1.0 if temperature is None else float(temperature)


def to_completion(call: LoraxCall, model: str | None, context_length: int | None) -> dict[str, Any]:
    """The `/v1/completions` body for `call`. `model`: the adapter's lora name, or None for the
    base (vLLM serves its base model when `model` is absent). `context_length`: the replica's,
    for the default `max_tokens` (vLLM clamps it to the room the prompt leaves)."""
    p = call.parameters
    if p.get("apply_chat_template"):
        raise InvalidRequest(
            "`apply_chat_template` is not supported on this deployment's engine; send the "
            "messages to the deployment's /v1/chat/completions instead.",
            param="apply_chat_template",
            code="unsupported_parameter",
        )
    out: dict[str, Any] = {"prompt": call.body["inputs"], "temperature": _temperature(p)}
    if model is not None:
        out["model"] = model
    max_new = p.get("max_new_tokens")
    if max_new is None:
        cap = DEFAULT_MAX_NEW_TOKENS
        max_new = cap if context_length is None else max(1, min(cap, context_length))
    out["max_tokens"] = max_new
    for lorax_name, openai_name in (
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("seed", "seed"),
        ("repetition_penalty", "repetition_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ):
        if p.get(lorax_name) is not None:
            out[openai_name] = p[lorax_name]
    if p.get("stop"):
        out["stop"] = list(p["stop"])
    if p.get("ignore_eos_token"):
        out["ignore_eos"] = True
    if call.stream or call.details:
        out["logprobs"] = 0
        out["return_token_ids"] = True
    if call.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# ---- answers -------------------------------------------------------------------------------


def finish_reason(openai_reason: str | None, stop_reason: object) -> str:
    """OpenAI's finish_reason (and vLLM's stop_reason) in LoRAX's words."""
    if openai_reason == "length":
        return "length"
    if openai_reason == "stop" and stop_reason is not None:
        return "stop_sequence"  # a stop string (str) or stop token id (int)
    return "eos_token"


def _token(token_id: int, text: str, logprob: float | None, special: bool) -> dict[str, Any]:
    return {
        "id": token_id,
        "text": text,
        "logprob": 0.0 if logprob is None else float(logprob),
        "special": special,
        "skipped": False,
    }


def _token_texts(ids: list[int], text: str, logprobs: dict[str, Any] | None) -> list[str]:
    """The text of each of `ids`, adding up to `text` (what vLLM released with them): one token
    gets it all; several get their own decoded texts when those add up, else the last gets it."""
    if not ids:
        return []
    if len(ids) == 1:
        return [text]
    pieces = (logprobs or {}).get("tokens")
    if isinstance(pieces, list) and len(pieces) == len(ids) and "".join(map(str, pieces)) == text:
        return [str(x) for x in pieces]
    return [""] * (len(ids) - 1) + [text]


def _logprob_list(logprobs: dict[str, Any] | None, n: int) -> list[float | None]:
    values = (logprobs or {}).get("token_logprobs")
    if isinstance(values, list) and len(values) == n:
        return values
    return [None] * n


def _choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamFailed("the engine's answer has no choice")
    return choices[0]


def from_completion(call: LoraxCall, answer: dict[str, Any]) -> dict[str, Any]:
    """A `/v1/completions` answer as LoRAX's `/generate` answer."""
    choice = _choice(answer)
    text = str(choice.get("text") or "")
    out: dict[str, Any] = {"generated_text": call.prefix + text}
    if not call.details:
        return out
    usage = answer.get("usage") or {}
    ids = [int(i) for i in choice.get("token_ids") or []]
    logprobs = choice.get("logprobs")
    texts = _per_token_texts(ids, text, logprobs)
    values = _logprob_list(logprobs, len(ids))
    reason = finish_reason(choice.get("finish_reason"), choice.get("stop_reason"))
    tokens = [
        _token(i, t, lp, special=(k == len(ids) - 1 and reason == "eos_token" and not t))
        for k, (i, t, lp) in enumerate(zip(ids, texts, values, strict=True))
    ]
    out["details"] = {
        "finish_reason": reason,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "generated_tokens": int(usage.get("completion_tokens") or len(ids)),
        "skipped_tokens": 0,
        "seed": call.seed,
        "prefill": [],
        "tokens": tokens,
        "best_of_sequences": None,
    }
    return out


def _per_token_texts(ids: list[int], text: str, logprobs: dict[str, Any] | None) -> list[str]:
    """A whole answer's token texts: each token's own decoded text when vLLM gave them (as
    LoRAX does), else the answer's text on the last token."""
    pieces = (logprobs or {}).get("tokens")
    if isinstance(pieces, list) and len(pieces) == len(ids):
        return [str(x) for x in pieces]
    return _token_texts(ids, text, None)


def lorax_answer(call: LoraxCall, status: int, data: bytes) -> tuple[int, bytes]:
    """The replica's whole answer to `call` (status and body) as LoRAX's."""
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = None
    if status != 200:
        return lorax_error(status, answer)
    if not isinstance(answer, dict):
        raise UpstreamFailed("the engine's answer is not a JSON object")
    body = from_completion(call, answer)
    return 200, compact_json([body] if call.as_list else body).encode()


def _error_message(answer: object) -> str:
    """The message of an OpenAI-style error answer (vLLM's `{"error": {"message"}}`, or its
    older `{"message"}`)."""
    if isinstance(answer, dict):
        err = answer.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(answer.get("message"), str):
            return str(answer["message"])
    return "the engine refused the request"


def lorax_error(status: int, answer: object) -> tuple[int, bytes]:
    """An engine's OpenAI-style error as LoRAX's: invalid input is 422 `validation`, like
    LoRAX's own answer; an unknown model 404; overload `overloaded`; anything else
    `generation`."""
    message = _error_message(answer)
    if status == 400 or status == 422:
        status, word = 422, LORAX_VALIDATION
    elif status == 404:
        word = "not_found"
    elif status in (429, 503):
        word = LORAX_OVERLOADED
    else:
        word = "generation"
    return status, compact_json(lorax_body(message, word)).encode()


# ---- streams -------------------------------------------------------------------------------


class StreamTransform(Protocol):
    """Rewrites a replica's SSE stream on its way to the client (see stream.py)."""

    def feed(self, chunk: bytes) -> bytes:
        """What to send for this piece of the replica's stream (maybe nothing yet)."""

    def end(self) -> bytes:
        """What to send once the replica's stream ended cleanly."""


class _Events:
    """SSE events out of arbitrary chunks: each complete `data:` payload, in order."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events: list[bytes] = []
        while True:
            cut = self._buffer.find(b"\n\n")
            if cut < 0:
                return events
            raw, self._buffer = self._buffer[:cut], self._buffer[cut + 2 :]
            data = [
                line[5:].lstrip(b" ")
                for line in raw.replace(b"\r\n", b"\n").split(b"\n")
                if line.startswith(b"data:")
            ]
            if data:
                events.append(b"\n".join(data))


def _sse(obj: object) -> bytes:
    return b"data:" + compact_json(obj).encode() + b"\n\n"


class LoraxStream:
    """vLLM's `/v1/completions` SSE as LoRAX's token events: one event per token, the last with
    `generated_text` and `details`. The last token's event waits for the usage chunk that
    follows it (or the end of the stream) to carry the counts."""

    def __init__(self, call: LoraxCall) -> None:
        self._call = call
        self._events = _Events()
        self._texts: list[str] = [call.prefix] if call.prefix else []
        self._carry = ""  # text released without a token, for the next token
        self._prompt_tokens: int | None = None
        self._generated = 0
        self._final: dict[str, Any] | None = None  # the last token's event, held for usage
        self._reason = "eos_token"
        self._done = False  # the final event (or an error) went out

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for data in self._events.feed(chunk):
            if self._done:
                continue
            if data.strip() == b"[DONE]":
                out.append(self._finish(None))
                continue
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            out.append(self._event(event))
        return b"".join(out)

    def end(self) -> bytes:
        if self._done:
            return b""
        if self._final is not None:
            return self._finish(None)
        return self._incomplete()

    def _event(self, event: dict[str, Any]) -> bytes:
        if "error" in event:
            self._done = True
            return _sse(lorax_body(_error_message(event), "generation"))
        out = b""
        choices = event.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            out = self._tokens(choices[0])
        usage = event.get("usage")
        if isinstance(usage, dict) and self._final is not None:
            out += self._finish(usage)
        return out

    def _tokens(self, choice: dict[str, Any]) -> bytes:
        prompt_ids = choice.get("prompt_token_ids")
        if isinstance(prompt_ids, list):
            self._prompt_tokens = len(prompt_ids)
        ids = [int(i) for i in choice.get("token_ids") or []]
        delta = str(choice.get("text") or "")
        self._texts.append(delta)
        text, self._carry = self._carry + delta, ""
        if not ids:
            self._carry = text  # goes out with the next token
        logprobs = choice.get("logprobs")
        texts = _token_texts(ids, text, logprobs)
        values = _logprob_list(logprobs, len(ids))
        self._generated += len(ids)
        reason = choice.get("finish_reason")
        if reason is not None:
            self._reason = finish_reason(reason, choice.get("stop_reason"))
        events: list[dict[str, Any]] = [
            {"token": _token(i, t, lp, False), "generated_text": None, "details": None}
            for i, t, lp in zip(ids, texts, values, strict=True)
        ]
        if reason is None:
            return b"".join(_sse(e) for e in events)
        if events:
            self._final = events.pop()
        else:  # a sequence that ended without a token of its own: an empty end-of-sequence one
            self._final = {"token": _token(0, self._carry, None, True)}  # id unknown: 0
            self._carry = ""
        token = self._final["token"]
        token["special"] = self._reason == "eos_token" and not token["text"]
        return b"".join(_sse(e) for e in events)

    def _finish(self, usage: dict[str, Any] | None) -> bytes:
        final = self._final
        if final is None:
            return self._incomplete()
        self._done = True
        usage = usage or {}
        prompt = usage.get("prompt_tokens", self._prompt_tokens)
        final["generated_text"] = "".join(self._texts)
        final["details"] = {
            "finish_reason": self._reason,
            "prompt_tokens": int(prompt or 0),
            "generated_tokens": int(usage.get("completion_tokens") or self._generated),
            "seed": self._call.seed,
        }
        return _sse(final)

    def _incomplete(self) -> bytes:
        self._done = True
        message = (
            "the engine ended the stream before the generation finished; the response is incomplete"
        )
        return _sse(lorax_body(message, LORAX_INCOMPLETE))


# ---- OpenAI answers of an adapter on vLLM: the user-facing name in `model` -----------------


def rename_model(answer: bytes, lora_name: str, adapter_name: str) -> bytes:
    """A whole JSON answer naming the adapter by its lora name, with the user's name instead."""
    try:
        obj = json.loads(answer)
    except ValueError:
        return answer
    if isinstance(obj, dict) and obj.get("model") == lora_name:
        obj["model"] = adapter_name
        return compact_json(obj).encode()
    return answer


class RenameModelStream:
    """An OpenAI SSE stream whose chunks name the adapter by its lora name, renamed."""

    def __init__(self, lora_name: str, adapter_name: str) -> None:
        self._rename: Callable[[bytes], bytes] = lambda data: rename_model(
            data, lora_name, adapter_name
        )
        self._events = _Events()

    def feed(self, chunk: bytes) -> bytes:
        out = []
        for data in self._events.feed(chunk):
            if data.strip() == b"[DONE]":
                out.append(b"data: [DONE]\n\n")
            else:
                out.append(b"data: " + self._rename(data) + b"\n\n")
        return b"".join(out)

    def end(self) -> bytes:
        return b""
