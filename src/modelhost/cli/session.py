"""What every API-calling command shares: building the SDK client from the resolved login, and
turning SDK errors into one line on stderr and a non-zero exit (never a traceback)."""

from __future__ import annotations

from typing import Any

import typer

# typer >= 0.2x vendors click as typer._click; the group's invoke must take that Context.
from typer import _click
from typer.core import TyperGroup

from modelhost.cli import config_store, output
from modelhost.client import Client
from modelhost.client.errors import (
    ModelhostAPIError,
    ModelhostConnectionError,
    ModelhostError,
    ModelhostSpendingLimitError,
)


class CliError(Exception):
    """A user-facing failure detected by the CLI itself."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def open_client(timeout: float = 30.0) -> Client:
    try:
        creds = config_store.resolve()
    except config_store.ConfigError as exc:
        raise CliError(str(exc)) from exc
    if creds.token is None:
        raise CliError(
            "not logged in: run `modelhost login --url URL --token TOKEN` "
            f"or set {config_store.ENV_TOKEN}"
        )
    return Client(creds.url, creds.token, timeout=timeout)


def deployment_id(client: Client, ref: str) -> str:
    """`ref` is a deploy id, or a deployment's full name `<username>/<model_name>`, looked up
    among the deployments this token may list (its own; every user's for an admin)."""
    if "/" not in ref:
        return ref
    deployments = client.list_deployments(all=client.me().is_admin)
    for dep in deployments:
        if dep.full_name == ref:
            return dep.deploy_id
    raise CliError(f"no deployment named {ref} (see `modelhost deploy list`)")


def describe_api_error(exc: ModelhostAPIError) -> str:
    msg = exc.message
    if exc.param and exc.param not in msg:
        msg += f" (param: {exc.param})"
    if exc.code:
        msg += f" [{exc.code}]"
    if exc.status_code == 401:
        msg += "; check your token (`modelhost login`, or MODELHOST_TOKEN)"
    if isinstance(exc, ModelhostSpendingLimitError):
        msg += "; see `modelhost spending-limit`"
    if exc.retry_after is not None:
        msg += f"; retry after {exc.retry_after:g}s"
    return msg


class ApiErrorGroup(TyperGroup):
    """The root command group: every subcommand runs inside its `invoke`, so this is the one
    place SDK and CLI errors become exit codes."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelhostAPIError as exc:
            output.error(describe_api_error(exc))
            raise typer.Exit(1) from None
        except ModelhostConnectionError as exc:
            output.error(str(exc))
            raise typer.Exit(1) from None
        except ModelhostError as exc:
            output.error(str(exc))
            raise typer.Exit(1) from None
        except CliError as exc:
            output.error(exc.message)
            raise typer.Exit(exc.exit_code) from None
