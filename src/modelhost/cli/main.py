"""The `modelhost` command: the root Typer app and the entry point."""

from __future__ import annotations

from typing import Annotated

import typer

from modelhost.cli import (
    adapters,
    auth,
    chat,
    deploy,
    limits,
    logs,
    models,
    serve,
    tokens,
    usage,
    users,
)
from modelhost.cli.session import ApiErrorGroup

app = typer.Typer(
    cls=ApiErrorGroup,
    name="modelhost",
    help="Dedicated, autoscaled LLM endpoints on your own GPUs.",
    no_args_is_help=True,
    add_completion=False,
    # Locals can hold API and HF tokens: never print them in a crash report.
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from modelhost import __version__

        typer.echo(f"modelhost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Dedicated, autoscaled LLM endpoints on your own GPUs.

    Log in with `modelhost login --url URL --token TOKEN` (or set MODELHOST_URL and
    MODELHOST_TOKEN), then `modelhost deploy create-llm --name NAME --base-model
    smollm2-135m-instruct`.
    """


serve.register(app)
auth.register(app)
app.add_typer(deploy.app, name="deploy")
logs.register(app)
chat.register(app)
app.add_typer(models.app, name="models")
app.add_typer(adapters.app, name="adapters")
app.add_typer(tokens.app, name="tokens")
app.add_typer(users.app, name="users")
usage.register(app)
limits.register(app)


def main() -> None:
    app(prog_name="modelhost")


if __name__ == "__main__":
    main()
