"""`modelhost users create | list | delete` (admin)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from modelhost.cli import output
from modelhost.cli.session import open_client

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
    t = output.table("USERNAME", "ADMIN", "GPU LIMIT", "GPUS RESERVED", "CREATED")
    for u in users:
        t.add_row(
            escape(u.username),
            output.fmt_value(u.is_admin),
            output.fmt_value(u.gpu_limit),
            output.fmt_value(u.gpus_reserved),
            output.fmt_time(u.created_at),
        )
    output.out().print(t)


@app.command()
def delete(username: str) -> None:
    """Delete a user."""
    with open_client() as client:
        client.delete_user(username)
    output.out().print(f"Deleted user {escape(username)}.")
