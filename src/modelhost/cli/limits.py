"""`modelhost spending-limit [show | set AMOUNT]`: the monthly spending limit (yours, or with
`--user` and an admin's token, another user's and its cap), and the option parsing the rate-limit
and pricing flags of `deploy`, `users` and `tokens` share."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from types import EllipsisType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from modelhost.cli import output
from modelhost.cli.session import CliError, open_client
from modelhost.client.models import Pricing, RateLimits, SpendingLimit

NONE_WORDS = frozenset({"none", "null", "off", "unlimited"})

app = typer.Typer(
    help="Your monthly spending limit (admins: any user's, and a cap on it).",
    invoke_without_command=True,
)

UserOpt = Annotated[
    str | None, typer.Option("--user", help="Admin: this user's limit instead of yours.")
]


# ---- shared parsing -----------------------------------------------------------------------


def parse_money(raw: str, what: str) -> Decimal:
    """A non-negative amount of USD as typed ("50", "0.2", "$12.50"), exactly."""
    text = raw.strip().removeprefix("$").strip()
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CliError(f"{what} must be an amount of USD such as 50 or 0.25, got {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise CliError(f"{what} must be a non-negative amount of USD, got {raw!r}")
    return value


def money_or_none(raw: str, what: str) -> Decimal | None:
    """An amount, or None for `none` (no limit)."""
    return None if raw.strip().lower() in NONE_WORDS else parse_money(raw, what)


def parse_fractions(raw: str) -> list[float]:
    """`0.5,0.8` (or percentages: `50%,80%`) -> [0.5, 0.8]; the server checks the range."""
    fractions: list[float] = []
    for part in raw.split(","):
        text = part.strip()
        if not text:
            continue
        try:
            fractions.append(float(text[:-1]) / 100 if text.endswith("%") else float(text))
        except ValueError:
            raise CliError(f"--alert-at takes fractions like 0.5,0.8; got {raw!r}") from None
    return fractions


def rate_limits_from(
    rpm: int | None,
    tpm: int | None,
    clear: bool,
    current: RateLimits | None = None,
) -> RateLimits | EllipsisType | None:
    """The `rate_limits` to send for `--rpm/--tpm/--no-rate-limits`: the given kinds replace
    those of `current` (the others are kept unless `clear`); `...` when nothing was asked, None
    to remove every limit."""
    if rpm is None and tpm is None:
        return None if clear else ...
    base = RateLimits() if clear or current is None else current
    limits = RateLimits(
        rpm=rpm if rpm is not None else base.rpm, tpm=tpm if tpm is not None else base.tpm
    )
    return limits


def pricing_from(
    prompt: str | None, completion: str | None, clear: bool, current: Pricing | None = None
) -> Pricing | EllipsisType | None:
    """The `pricing` to send for `--price-prompt/--price-completion/--no-pricing` (USD per 1M
    tokens): a price not given keeps `current`'s, or is 0; `...` when nothing was asked."""
    if prompt is None and completion is None:
        return None if clear else ...
    if clear and (prompt is None or completion is None):
        raise CliError("--no-pricing with a price needs both --price-prompt and --price-completion")
    zero = Decimal(0)
    return Pricing(
        usd_per_1m_prompt_tokens=(
            parse_money(prompt, "--price-prompt")
            if prompt is not None
            else (current.usd_per_1m_prompt_tokens if current else zero)
        ),
        usd_per_1m_completion_tokens=(
            parse_money(completion, "--price-completion")
            if completion is not None
            else (current.usd_per_1m_completion_tokens if current else zero)
        ),
    )


def fmt_rate_limits(limits: RateLimits | None) -> str:
    return "-" if limits is None or (limits.rpm is None and limits.tpm is None) else str(limits)


def fmt_pricing(pricing: Pricing | None) -> str:
    if pricing is None:
        return "-"
    return (
        f"{pricing.usd_per_1m_prompt_tokens} USD/1M prompt, "
        f"{pricing.usd_per_1m_completion_tokens} USD/1M completion"
    )


# ---- rendering ------------------------------------------------------------------------------


def _usd(value: Decimal | None, none: str = "none") -> str:
    return none if value is None else f"{value} USD"


def print_spending_limit(console: Console, view: SpendingLimit, user: str | None) -> None:
    who = f"{escape(user)}'s" if user else "Your"
    console.print(f"{who} spending limit for {escape(view.month or '-')} (UTC)", style="bold")
    rows = [
        (
            "limit",
            _usd(view.usd_per_month) + (" a month" if view.usd_per_month is not None else ""),
        ),
        ("admin cap", _usd(view.max_usd_per_month)),
        ("enforced", _usd(view.effective_usd_per_month, "no limit")),
    ]
    spent = f"{view.spent} USD"
    limit = view.effective_usd_per_month
    if limit:
        spent += f" ({view.spent / limit:.1%})"
    rows.append(("spent", spent))
    rows.append(("remaining", _usd(view.remaining, "-")))
    rows.append(("alerts at", " ".join(f"{f:.0%}" for f in view.alert_at) or "-"))
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        console.print(f"  {key + ':':<{width}} {value}", markup=False)
    status = (
        "[bold red]reached[/bold red]: inference and deployment starts are refused (402)"
        if view.reached
        else "[green]ok[/green]"
    )
    console.print(f"  {'status:':<{width}} {status}")
    if view.alerts:
        t = output.table("ALERT AT", "SENT", "SPENT USD", "LIMIT USD")
        for alert in view.alerts:
            t.add_row(
                f"{alert.fraction:.0%}",
                output.fmt_time(alert.at),
                str(alert.spent),
                str(alert.limit),
            )
        console.print("Alerts sent this month:")
        console.print(t)


# ---- commands -------------------------------------------------------------------------------


@app.callback()
def _group(ctx: typer.Context) -> None:
    """Your monthly spending limit: `show` (the default) or `set AMOUNT`."""
    if ctx.invoked_subcommand is None:
        show(user=None)


@app.command()
def show(user: UserOpt = None) -> None:
    """The limit, an admin's cap, this month's spend and the alerts sent."""
    with open_client() as client:
        view = client.user_spending_limit(user) if user else client.spending_limit()
    print_spending_limit(output.out(), view, user)


@app.command("set")
def set_(
    amount: Annotated[
        str | None,
        typer.Argument(help="USD a month (e.g. 50), or `none` to remove it; optional with --user."),
    ] = None,
    alert_at: Annotated[
        str | None,
        typer.Option("--alert-at", help="Fractions at which to alert, e.g. 0.5,0.8."),
    ] = None,
    user: UserOpt = None,
    cap: Annotated[
        str | None,
        typer.Option(
            "--cap", help="Admin, with --user: the most the user may set (USD), or `none`."
        ),
    ] = None,
) -> None:
    """Set the monthly limit; when reached, inference and deployment starts are refused."""
    fractions = parse_fractions(alert_at) if alert_at is not None else None
    with open_client() as client:
        if user is None:
            if cap is not None:
                raise CliError("--cap needs --user (an admin caps another user's limit)")
            if amount is None:
                raise CliError("give an amount in USD, or `none` to remove your limit")
            view = client.set_spending_limit(money_or_none(amount, "AMOUNT"), alert_at=fractions)
        else:
            if amount is None and cap is None and fractions is None:
                raise CliError("give an amount, --cap or --alert-at")
            view = client.set_user_spending_limit(
                user,
                usd_per_month=... if amount is None else money_or_none(amount, "AMOUNT"),
                max_usd_per_month=... if cap is None else money_or_none(cap, "--cap"),
                alert_at=fractions,
            )
    print_spending_limit(output.out(), view, user)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="spending-limit")
