"""Logging for `modelhost serve`: one handler and one format for the server's own lines and
uvicorn's (access lines included), and no query string reaches the log unredacted.

Tokens are never accepted in a query string, but a client may still send one there
(`GET /v1/me?api_key=mh_...` is refused with 401), and the access log would record it. Every
line therefore keeps the keys of a query string and replaces the values: `?api_key=***`.
"""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A URL or a path, then its query string (up to whitespace, a quote or a fragment).
_QUERY = re.compile(r"(?P<path>(?:https?://|/)[^\s?\"'#]*)\?(?P<query>[^\s\"'#]*)")


def _redact_part(part: str) -> str:
    key, eq, _ = part.partition("=")
    return f"{key}=***" if eq else "***"  # a bare part may be a value (`?mh_...`)


def redact_queries(text: str) -> str:
    """`text` with the value of every query-string parameter replaced by `***`."""
    return _QUERY.sub(
        lambda m: m["path"] + "?" + "&".join(_redact_part(p) for p in m["query"].split("&")),
        text,
    )


class RedactQueries(logging.Filter):
    """On a handler, so that it sees every record, its own loggers' and propagated ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = redact_queries(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "?" in record.exc_text:
            record.exc_text = redact_queries(record.exc_text)
        return True


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactQueries())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The control loops probe every replica's /health or /stats each second; httpx logs each
    # request at INFO, which buried everything else in the log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Alembic names each of its plugins at start-up; its migration lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
