"""Server-sent-event decoding for the SDK's streaming chat (pure; no I/O).

The gateway streams OpenAI chunks as `data: {...}` events ending with `data: [DONE]`. An error
after the stream began arrives as a final `data: {"error": {...}}` event; it is raised, never
swallowed, so a truncated answer cannot pass for a complete one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from modelhost.client.errors import ModelhostAPIError, error_from_payload

DONE = "[DONE]"


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed chat answer. The last chunks may carry only `finish_reason` or,
    with `stream_options.include_usage`, only `usage`."""

    content: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """Yield the data of each event (multi-line data joined with newlines), up to `[DONE]`."""
    buf: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line == "":
            if buf:
                data = "\n".join(buf)
                buf = []
                if data == DONE:
                    return
                yield data
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            buf.append(value[1:] if value.startswith(" ") else value)
    if buf:
        data = "\n".join(buf)
        if data != DONE:
            yield data


def iter_chat_deltas(lines: Iterable[str], status_code: int = 200) -> Iterator[ChatDelta]:
    """Decode OpenAI chat-completion chunks; raise ModelhostAPIError on an in-stream error."""
    for data in iter_sse_data(lines):
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ModelhostAPIError(
                status_code, "bad_stream", f"undecodable stream event: {data[:200]}", in_stream=True
            ) from exc
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            raise error_from_payload(chunk, status_code, in_stream=True)
        usage = chunk.get("usage")
        choices = chunk.get("choices") or []
        if not choices:
            if isinstance(usage, dict):
                yield ChatDelta("", usage=usage)
            continue
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content") or ""
        yield ChatDelta(
            content,
            finish_reason=choice.get("finish_reason"),
            usage=usage if isinstance(usage, dict) else None,
        )
