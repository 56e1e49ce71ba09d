"""Query strings are redacted in every line the server logs (issue 9 item 7)."""

from __future__ import annotations

import io
import logging

from modelhost.serve.log_config import RedactQueries, redact_queries


def test_values_are_replaced_and_keys_kept() -> None:
    line = '127.0.0.1:5 - "GET /v1/me?api_key=mh_secret&x=1 HTTP/1.1" 401'
    assert redact_queries(line) == '127.0.0.1:5 - "GET /v1/me?api_key=***&x=*** HTTP/1.1" 401'
    assert redact_queries("see http://h:1/a?mh_secret#frag") == "see http://h:1/a?***#frag"
    assert redact_queries("why? because /plain/path stays") == "why? because /plain/path stays"


def test_the_filter_redacts_arguments_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactQueries())
    log = logging.getLogger("test_serve_logging")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning('%s - "%s %s"', "127.0.0.1", "GET", "/v1/me?api_key=mh_a")
        try:
            raise ValueError("bad url /x?token=mh_b")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "/v1/me?api_key=***" in text and "/x?token=***" in text
    assert "mh_a" not in text and "mh_b" not in text
