"""`modelhost logs ID [-f]`: replica output of a deployment."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer

from modelhost.cli import output
from modelhost.cli.session import CliError, deployment_id, open_client
from modelhost.client.models import LogEntry

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float) -> float:
    """`10m`, `2h`, `1d`, `30s` ago; an ISO time (naive = local); or unix seconds."""
    text = value.strip()
    unit = _UNITS.get(text[-1:].lower())
    if unit is not None:
        try:
            return now - float(text[:-1]) * unit
        except ValueError:
            pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CliError(
            f"--since: expected e.g. 10m, 2h, an ISO time or unix seconds: {value!r}"
        ) from None


def _format(entry: LogEntry, show_replica: bool) -> str:
    parts = []
    if entry.ts is not None:
        parts.append(output.fmt_time(entry.ts))
    if show_replica and entry.replica:
        parts.append(f"[{entry.replica}]")
    parts.append(entry.line)
    return " ".join(parts)


def logs(
    deploy_id: Annotated[str, typer.Argument(help="Deploy id, or <username>/<model_name>.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines.")] = False,
    replica: Annotated[str | None, typer.Option(help="Only this replica's output.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Skip replicas gone before this: 10m, 2h, ISO or unix.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many (latest) lines.")] = None,
) -> None:
    """Print a deployment's replica logs; -f keeps streaming until Ctrl-C."""
    show_replica = replica is None
    since_ts = parse_since(since, time.time()) if since is not None else None
    with open_client() as client:
        deploy_id = deployment_id(client, deploy_id)
        if not follow:
            for entry in client.logs(deploy_id, replica=replica, since=since_ts, limit=limit):
                # typer.echo, not Rich: log lines are arbitrary text, never markup.
                typer.echo(_format(entry, show_replica))
            return
        stream = client.follow_logs(deploy_id, replica=replica, since=since_ts, limit=limit)
        try:
            for entry in stream:
                typer.echo(_format(entry, show_replica))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            stream.close()


def register(app: typer.Typer) -> None:
    app.command()(logs)
