"""`modelhost models list`: the server's model catalog (names for `--base-model`)."""

from __future__ import annotations

import typer
from rich.markup import escape

from modelhost.cli import output
from modelhost.cli.session import open_client

app = typer.Typer(help="The server's model catalog.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """Models you can deploy with `deploy create-llm --base-model NAME`."""
    with open_client() as client:
        models = client.catalog_models()
    t = output.table("NAME", "AVAILABLE", "DESCRIPTION")
    for m in models:
        t.add_row(escape(m.name), output.fmt_value(m.available), escape(m.description))
    output.out().print(t)
