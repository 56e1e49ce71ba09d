"""Token usage of one inference request, read from the engine's own counts (pure: no I/O).

- A whole answer: the engine's `x-prompt-tokens` / `x-generated-tokens` headers (modelhost's
  engines and LoRAX/TGI send them), else the body: OpenAI's `usage`, or LoRAX's `details`
  (`generated_tokens`, and `prompt_tokens` where the engine reports it).
- A stream: the OpenAI usage chunk (`"choices": [], "usage": {...}`), or LoRAX's last event
  (`details` with `generated_tokens`). An OpenAI stream whose client did not ask for usage is
  sent upstream with `stream_options.include_usage` (`ask_for_usage`), and the usage chunk the
  client did not ask for is taken out of what it receives (`StreamUsage(drop_usage_chunk=True)`).

What the tokens cost (`token_cost`): a caller other than the deployment's owner pays its
`pricing` per 1M tokens; the owner (who pays the GPU time) and every caller of an unpriced
deployment pay nothing.

Only events that can carry counts are parsed (a byte search first), so the tokens streamed in
between cost a substring test each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelhost.domain.deployment_config import TokenPricing
from modelhost.domain.money import token_cost_micros

_OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions")
_SEP = b"\n\n"
# An event that may carry counts: a `usage` object (not `"usage":null`), or LoRAX details.
_MAY_COUNT = re.compile(rb'"usage"\s*:\s*\{|"generated_tokens"')


@dataclass(frozen=True)
class Tokens:
    prompt: int
    completion: int


def token_cost(
    tokens: Tokens, caller_id: int, owner_id: int | None, pricing: TokenPricing | None
) -> int:
    """Micro-dollars `caller_id` pays for `tokens` on a deployment of `owner_id` priced at
    `pricing` (rounded half up once, on the sum): 0 for the owner or with no pricing."""
    if pricing is None or caller_id == owner_id:
        return 0
    return token_cost_micros(
        tokens.prompt,
        tokens.completion,
        pricing.prompt_micros_per_1m,
        pricing.completion_micros_per_1m,
    )


def ask_for_usage(path: str, body: dict[str, Any]) -> bool:
    """For an OpenAI stream whose client did not ask for usage, ask the engine for it (in
    `body`, in place). True when added: the usage chunk is then not the client's to see."""
    if path not in _OPENAI_PATHS or body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return False  # refused by validation before this; leave it as it is
    if options.get("include_usage") is True:
        return False
    body["stream_options"] = {**options, "include_usage": True}
    return True


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def from_object(obj: object) -> Tokens | None:
    """Counts in one parsed answer or event: OpenAI `usage` or LoRAX `details`."""
    if isinstance(obj, list):
        obj = obj[0] if len(obj) == 1 else None
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        completion = _int(usage.get("completion_tokens"))
        if completion is not None:
            return Tokens(_int(usage.get("prompt_tokens")) or 0, completion)
    details = obj.get("details")
    if isinstance(details, dict):
        generated = _int(details.get("generated_tokens"))
        if generated is not None:
            return Tokens(_int(details.get("prompt_tokens")) or 0, generated)
    return None


def from_headers(headers: Mapping[str, str]) -> Tokens | None:
    generated = headers.get("x-generated-tokens")
    if generated is None or not generated.strip().isdigit():
        return None
    prompt = headers.get("x-prompt-tokens", "")
    return Tokens(int(prompt) if prompt.strip().isdigit() else 0, int(generated))


def from_answer(data: bytes, headers: Mapping[str, str] | None = None) -> Tokens | None:
    """Counts of a whole (non-streamed) answer."""
    if headers is not None:
        found = from_headers(headers)
        if found is not None:
            return found
    if _MAY_COUNT.search(data) is None:
        return None
    try:
        return from_object(json.loads(data))
    except ValueError:
        return None


def _event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its `data:` lines joined), or None."""
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].strip() for line in lines)


def _is_usage_chunk(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


class StreamUsage:
    """Watches a stream's events as they go to the client: `feed` each chunk (it returns what
    to send on), `end()` at the end (what is left to send). `tokens` holds the counts once an
    event carried them; `billable()` is what to bill when the stream ended without them."""

    def __init__(self, drop_usage_chunk: bool = False) -> None:
        self.drop_usage_chunk = drop_usage_chunk
        self.tokens: Tokens | None = None
        # Events that carried generated text, not counts: the engines send one per token.
        self.sent_events = 0
        self._buf = b""

    def billable(self) -> Tokens | None:
        """The engine's counts; for a stream cut before they came (the client left), the
        completion tokens it was sent, one per event (the prompt's count never came)."""
        if self.tokens is not None:
            return self.tokens
        return Tokens(0, self.sent_events) if self.sent_events else None

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk if self._buf else chunk
        if _SEP not in buf:
            self._buf = buf
            return b"" if self.drop_usage_chunk else chunk
        *events, self._buf = buf.split(_SEP)
        if not self.drop_usage_chunk:
            for event in events:
                self._observe(event)
            return chunk  # passed on as it came: nothing is held back
        kept = [event + _SEP for event in events if not self._observe(event)]
        return b"".join(kept)

    def end(self) -> bytes:
        rest, self._buf = self._buf, b""
        if not rest.strip():
            return rest if self.drop_usage_chunk else b""
        dropped = self._observe(rest)
        if not self.drop_usage_chunk:
            return b""  # already sent as it came
        return b"" if dropped else rest

    def _observe(self, event: bytes) -> bool:
        """Note the counts an event carries; True when it is a usage chunk to drop."""
        if _MAY_COUNT.search(event) is None:
            if b"data:" in event and b"[DONE]" not in event:
                self.sent_events += 1
            return False
        data = _event_data(event)
        if data is None or data == b"[DONE]":
            return False
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        found = from_object(obj)
        if found is not None:
            self.tokens = found
        return self.drop_usage_chunk and _is_usage_chunk(obj)
