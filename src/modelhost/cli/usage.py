"""`modelhost usage` and `modelhost invoices list | show ID`: what your deployments and calls
cost, and the weekly invoices (Monday 00:00 to Monday 00:00 UTC)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modelhost.cli import output
from modelhost.cli.session import CliError, open_client

GROUP_BYS = ("deployment", "day", "gpu", "api_token", "adapter")
KEY_TITLES = {
    "deployment": "DEPLOY ID",
    "day": "DAY",
    "gpu": "GPU",
    "api_token": "TOKEN ID",
    "adapter": "ADAPTER",
}

invoices_app = typer.Typer(help="Your weekly invoices.", no_args_is_help=True)


def usage(
    start: Annotated[
        str | None,
        typer.Option(help="ISO 8601 date or time (UTC unless it says); default: this month's 1st"),
    ] = None,
    end: Annotated[str | None, typer.Option(help="ISO 8601, exclusive; default: now")] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="deployment | day | gpu | api_token | adapter")
    ] = "deployment",
    csv: Annotated[bool, typer.Option("--csv", help="Print the server's CSV instead.")] = False,
    user: Annotated[str | None, typer.Option(help="Admin: this user's usage.")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Admin: every user's usage.")] = False,
) -> None:
    """GPU time and tokens, and what they cost, between START and END."""
    if group_by not in GROUP_BYS:
        raise CliError(f"--group-by must be one of {', '.join(GROUP_BYS)}")
    with open_client() as client:
        if csv:
            text = client.usage_csv(start, end, group_by=group_by, user=user, all=all_users)
            typer.echo(text, nl=False)
            return
        result = client.usage(start, end, group_by=group_by, user=user, all=all_users)
    t = output.table(
        KEY_TITLES[group_by],
        "NAME",
        "GPU-SECONDS",
        "GPU COST",
        "PROMPT TOK",
        "COMPL TOK",
        "TOKEN COST",
        "TOTAL USD",
    )
    for col in t.columns[2:]:
        col.justify = "right"
    for row in result.rows:
        t.add_row(
            escape(row.key),
            escape(row.name),
            f"{row.gpu_seconds:.3f}",
            str(row.gpu_cost),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            str(row.token_cost),
            str(row.total_cost),
        )
    con = output.out()
    con.print(
        f"Usage from {output.fmt_time(result.start)} to {output.fmt_time(result.end)} "
        f"(local time), by {group_by}"
    )
    if result.rows:
        con.print(t)
    else:
        con.print("No usage in this period.")
    con.print(f"Total: {result.total_cost} USD")


@invoices_app.command("list")
def list_(
    user: Annotated[str | None, typer.Option(help="Admin: this user's invoices.")] = None,
) -> None:
    """Weekly invoices, newest first: the current week is open (it still changes)."""
    with open_client() as client:
        invoices = client.invoices(user=user)
    if not invoices:
        output.out().print("No invoices yet (there is no usage).")
        return
    t = output.table("INVOICE ID", "WEEK (UTC)", "STATUS", "TOTAL USD")
    t.columns[3].justify = "right"
    for inv in invoices:
        week = f"{inv.period_start:%Y-%m-%d} to {inv.period_end:%Y-%m-%d}"
        status = "[yellow]open[/yellow]" if inv.status == "open" else escape(inv.status)
        t.add_row(escape(inv.invoice_id), week, status, str(inv.total))
    output.out().print(t)


@invoices_app.command()
def show(
    invoice_id: str,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write the printable HTML page to this file instead."),
    ] = None,
) -> None:
    """An invoice's lines: GPU time per deployment and GPU type, tokens per shared endpoint."""
    with open_client() as client:
        if html is not None:
            html.write_text(client.invoice_html(invoice_id), encoding="utf-8")
            output.out().print(f"Wrote {escape(str(html))}.")
            return
        inv = client.invoice(invoice_id)
    con = output.out()
    con.print(
        f"Invoice {escape(inv.invoice_id)} for {escape(inv.user or '-')}: "
        f"{inv.period_start:%Y-%m-%d} to {inv.period_end:%Y-%m-%d} UTC, {escape(inv.status)}"
    )
    t = output.table("DESCRIPTION", "QUANTITY", "UNIT", "UNIT PRICE", "AMOUNT")
    for i in (1, 3, 4):
        t.columns[i].justify = "right"
    for line in inv.lines:
        t.add_row(
            escape(line.description),
            str(line.quantity),
            escape(line.unit),
            str(line.unit_price),
            str(line.amount),
        )
    con.print(t)
    con.print(f"Total: {inv.total} {escape(inv.currency)}")


def register(app: typer.Typer) -> None:
    app.command()(usage)
    app.add_typer(invoices_app, name="invoices")
