"""`modelhost tokens list | create NAME | revoke TOKEN_ID`: the caller's own API tokens."""

from __future__ import annotations

import typer
from rich.markup import escape

from modelhost.cli import output
from modelhost.cli.session import open_client

app = typer.Typer(help="Manage your API tokens.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List your tokens (secrets are never shown again after creation)."""
    with open_client() as client:
        tokens = client.list_tokens()
    t = output.table("TOKEN ID", "NAME", "PREFIX", "CREATED", "LAST USED")
    for tok in tokens:
        t.add_row(
            escape(tok.token_id or "-"),
            escape(tok.name),
            escape(tok.prefix or "-"),
            output.fmt_time(tok.created_at),
            output.fmt_time(tok.last_used_at),
        )
    output.out().print(t)


@app.command()
def create(name: str) -> None:
    """Create a token; it is printed once, on stdout, so it can be captured by a script."""
    with open_client() as client:
        tok = client.create_token(name)
    output.err().print(
        f"Created token {tok.name!r} ({tok.token_id or '-'}). Store it now: it is not shown again.",
        markup=False,
    )
    typer.echo(tok.token or "")


@app.command()
def revoke(token_id: str) -> None:
    """Revoke a token; calls using it fail from now on."""
    with open_client() as client:
        client.revoke_token(token_id)
    output.out().print(f"Revoked {escape(token_id)}.")
