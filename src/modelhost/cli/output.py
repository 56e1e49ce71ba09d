"""Rich consoles and the small formatting rules every command shares (times, statuses)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

STATUS_STYLES = {
    "ready": "green",
    "standby": "cyan",
    "pending": "yellow",
    "initializing": "yellow",
    "updating": "yellow",
    "stopped": "dim",
    "errored": "bold red",
    "deleted": "dim",
}


def out() -> Console:
    """stdout. Built per call so it binds to the current sys.stdout (CliRunner swaps it). When
    piped, a wide fixed width keeps table rows whole for grep and friends."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def err() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def error(message: str) -> None:
    # markup=False: API messages may contain square brackets.
    err().print(f"Error: {message}", style="red", markup=False)


def status_text(status: str) -> str:
    style = STATUS_STYLES.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def fmt_time(value: datetime | str | float | None) -> str:
    """Local time, second precision; accepts what the API sends (datetime, ISO, unix)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, tz=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(*columns: str) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        t.add_column(name, overflow="fold")
    return t


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) if value else "[]"
    return str(value)
