"""`modelhost users create | list | update | delete` (admin)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from modelhost.cli import limits, output
from modelhost.cli.session import CliError, open_client

app = typer.Typer(help="Manage users (admin).", no_args_is_help=True)


@app.command()
def create(
    username: str,
    gpu_limit: Annotated[
        int | None, typer.Option(help="GPU quota (default: the server's).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
) -> None:
    """Create a user; their first API token is printed once, on stdout."""
    with open_client() as client:
        created = client.create_user(username, gpu_limit=gpu_limit, is_admin=admin)
    output.err().print(
        f"Created user {created.username!r}. Give them this token; it is not shown again.",
        markup=False,
    )
    typer.echo(created.token)


@app.command("list")
def list_() -> None:
    """List users."""
    with open_client() as client:
        users = client.list_users()
    # The RATE LIMITS column only appears when a user has limits.
    limited = any(u.rate_limits for u in users)
    columns = ["USERNAME", "ADMIN", "GPU LIMIT", "GPUS RESERVED", "CREATED"]
    t = output.table(*columns, *(["RATE LIMITS"] if limited else []))
    for u in users:
        row = [
            escape(u.username),
            output.fmt_value(u.is_admin),
            output.fmt_value(u.gpu_limit),
            output.fmt_value(u.gpus_reserved),
            output.fmt_time(u.created_at),
        ]
        if limited:
            row.append(escape(limits.fmt_rate_limits(u.rate_limits)))
        t.add_row(*row)
    output.out().print(t)


@app.command()
def update(
    username: str,
    gpu_limit: Annotated[int | None, typer.Option(help="GPU quota.")] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute over all the user's requests.")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute, likewise.")] = None,
    no_rate_limits: Annotated[
        bool,
        typer.Option(
            "--no-rate-limits", help="Remove the user's rate limits (then apply --rpm/--tpm)."
        ),
    ] = False,
) -> None:
    """Change a user's GPU quota and rate limits (applied live). --rpm or --tpm alone keeps the
    other kind's limit."""
    with open_client() as client:
        current = None
        if (rpm is not None or tpm is not None) and not no_rate_limits:
            found = [u for u in client.list_users() if u.username == username]
            current = found[0].rate_limits if found else None
        rate_limits = limits.rate_limits_from(rpm, tpm, no_rate_limits, current)
        if gpu_limit is None and rate_limits is ...:
            raise CliError("nothing to update; see `modelhost users update --help`")
        user = client.update_user(username, gpu_limit, rate_limits=rate_limits)
    output.out().print(
        f"Updated {escape(user.username)}: GPU limit {output.fmt_value(user.gpu_limit)}, "
        f"rate limits {escape(limits.fmt_rate_limits(user.rate_limits))}"
    )


@app.command()
def delete(username: str) -> None:
    """Delete a user."""
    with open_client() as client:
        client.delete_user(username)
    output.out().print(f"Deleted user {escape(username)}.")
