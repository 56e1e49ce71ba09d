"""`modelhost login | logout | whoami | token`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from modelhost.cli import config_store, output
from modelhost.cli.session import CliError, open_client
from modelhost.client import Client


def login(
    url: Annotated[str, typer.Option(help="Server URL, e.g. http://127.0.0.1:8080.")],
    token: Annotated[
        str | None,
        typer.Option(
            help="API token. Omit it to be prompted (a flag value is visible to other local "
            "users in `ps`)."
        ),
    ] = None,
    token_stdin: Annotated[
        bool,
        typer.Option(
            "--token-stdin",
            help="Read the token from standard input (e.g. < ~/.modelhost/admin-token).",
        ),
    ] = False,
) -> None:
    """Check a token against the server (GET /v1/me) and store URL and token (mode 0600)."""
    if token is not None and token_stdin:
        raise CliError("give the token with --token or --token-stdin, not both")
    if token_stdin:
        token = sys.stdin.readline()
    elif token is None:
        token = typer.prompt("Token", hide_input=True)
    token = token.strip()
    if not token:
        raise CliError("empty token")
    url = url.rstrip("/")
    with Client(url, token) as client:
        me = client.me()
    path = config_store.save(config_store.Login(url=url, token=token))
    role = " (admin)" if me.is_admin else ""
    output.out().print(f"Logged in to {url} as [bold]{me.username}[/bold]{role}.")
    output.out().print(f"Saved to {path}", style="dim", markup=False)


def logout() -> None:
    """Forget the stored login."""
    if config_store.delete():
        output.out().print("Logged out.")
    else:
        output.out().print("Not logged in.")


def whoami() -> None:
    """Show the account behind the current token and where the credentials come from."""
    creds = config_store.resolve()
    with open_client() as client:
        me = client.me()
    console = output.out()
    role = " (admin)" if me.is_admin else ""
    console.print(f"[bold]{me.username}[/bold]{role}")
    console.print(f"server:    {creds.url}  [dim]({creds.url_source})[/dim]")
    console.print(f"token:     from {creds.token_source}")
    limit = "-" if me.gpu_limit is None else str(me.gpu_limit)
    used = "-" if me.gpus_reserved is None else str(me.gpus_reserved)
    console.print(f"GPU quota: {used} of {limit} reserved")


def token() -> None:
    """Print the API token the CLI uses (stored by login, or MODELHOST_TOKEN), for scripts:
    curl -H "Authorization: Bearer $(modelhost token)" ..."""
    creds = config_store.resolve()
    if not creds.token:
        raise CliError("not logged in: run `modelhost login --url URL` or set MODELHOST_TOKEN")
    typer.echo(creds.token)


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.command("token")(token)
