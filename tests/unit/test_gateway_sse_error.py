"""Mid-stream errors in each API's words, parsed by LoRAX's own client where it applies."""

from __future__ import annotations

import json

from lorax.errors import GenerationError, IncompleteGenerationError, parse_error

from modelhost.errors import Unavailable, UpstreamFailed
from modelhost.web.errors import sse_error


def event(raw: bytes) -> dict[str, object]:
    text = raw.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    body: dict[str, object] = json.loads(text[len("data: ") :])
    return body


def test_a_replica_dying_mid_stream_is_lorax_incomplete_generation() -> None:
    err = UpstreamFailed("replica r1 failed mid-stream; the response is incomplete")
    lorax = event(sse_error(err, "lorax"))
    assert lorax == {"error": err.message, "error_type": "incomplete_generation"}
    assert isinstance(parse_error(200, lorax), IncompleteGenerationError)  # type: ignore[arg-type]
    openai = event(sse_error(err, "openai"))
    assert openai["error"] == {
        "message": err.message,
        "type": "server_error",
        "param": None,
        "code": "replica_failed",
    }


def test_other_errors_keep_their_code() -> None:
    lorax = event(sse_error(Unavailable("stopped", code="deployment_stopped"), "lorax"))
    assert lorax["error_type"] == "deployment_stopped"
    assert not isinstance(parse_error(503, lorax), GenerationError)  # type: ignore[arg-type]
