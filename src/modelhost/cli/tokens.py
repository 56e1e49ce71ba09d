"""`modelhost tokens list | create NAME | revoke TOKEN_ID`: the caller's own API tokens."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from modelhost.cli import limits, output
from modelhost.cli.session import open_client

app = typer.Typer(help="Manage your API tokens.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List your tokens (secrets are never shown again after creation)."""
    with open_client() as client:
        tokens = client.list_tokens()
    # The RATE LIMITS column only appears when a token has its own limits.
    limited = any(tok.rate_limits for tok in tokens)
    columns = ["TOKEN ID", "NAME", "PREFIX", "CREATED", "LAST USED"]
    t = output.table(*columns, *(["RATE LIMITS"] if limited else []))
    for tok in tokens:
        row = [
            escape(tok.token_id or "-"),
            escape(tok.name),
            escape(tok.prefix or "-"),
            output.fmt_time(tok.created_at),
            output.fmt_time(tok.last_used_at),
        ]
        if limited:
            row.append(escape(limits.fmt_rate_limits(tok.rate_limits)))
        t.add_row(*row)
    output.out().print(t)


@app.command()
def create(
    name: str,
    rpm: Annotated[
        int | None, typer.Option(help="This token's own requests per minute (besides yours).")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="This token's own tokens per minute.")] = None,
) -> None:
    """Create a token; it is printed once, on stdout, so it can be captured by a script."""
    rate_limits = limits.rate_limits_from(rpm, tpm, False)
    with open_client() as client:
        tok = client.create_token(name, rate_limits=None if rate_limits is ... else rate_limits)
    limited = f", limited to {tok.rate_limits}" if tok.rate_limits else ""
    output.err().print(
        f"Created token {tok.name!r} ({tok.token_id or '-'}){limited}. "
        "Store it now: it is not shown again.",
        markup=False,
    )
    typer.echo(tok.token or "")


@app.command()
def revoke(token_id: str) -> None:
    """Revoke a token; calls using it fail from now on."""
    with open_client() as client:
        client.revoke_token(token_id)
    output.out().print(f"Revoked {escape(token_id)}.")
