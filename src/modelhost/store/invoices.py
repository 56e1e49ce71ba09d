"""Weekly invoices, computed from the usage rows: one per user and week (Monday 00:00 UTC to
the next Monday 00:00 UTC) with usage.

Nothing is stored: an invoice is a pure function of the rows of its week. The current week is
`open` and changes as the meters write; an earlier week is `final` and never changes, because
its rows are never written again (the meters only grow the current minute) and each row carries
its own price (`usd_per_hour_micros`, `cost_micros` at metering time): a price changed later
applies to later rows only. So the id is deterministic too: `inv_<user_id>_<YYYYMMDD>` of the
week's Monday.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelhost.domain.money import MS_PER_HOUR, div_round_half_up, format_micros, gpu_cost_micros
from modelhost.store.tables import GpuUsage, RequestUsage
from modelhost.store.usage_queries import (
    deployment_infos,
    deployment_owners,
    gpu_pieces,
    token_sums,
    utc,
)

WEEK = timedelta(days=7)
TOKENS_PER_UNIT = 1_000_000  # token lines are priced per million tokens
GPU_UNIT = "GPU-hour"
TOKEN_UNIT = "1M tokens"
_ID_RE = re.compile(r"^inv_(\d{1,18})_(\d{8})$")

InvoiceStatus = Literal["open", "final"]


def week_start(at: datetime) -> datetime:
    """The Monday 00:00 UTC at or before `at`."""
    at = utc(at)
    monday = at.date() - timedelta(days=at.weekday())
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def invoice_id(user_id: int, start: datetime) -> str:
    return f"inv_{user_id}_{utc(start):%Y%m%d}"


def parse_invoice_id(value: str) -> tuple[int, datetime] | None:
    """(user_id, the week's Monday) of an invoice id; None for anything else."""
    m = _ID_RE.match(value)
    if m is None:
        return None
    try:
        start = datetime.strptime(m.group(2), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    if start.weekday() != 0:
        return None
    return int(m.group(1)), start


@dataclass(frozen=True)
class InvoiceLine:
    description: str
    deploy_id: str | None
    gpu: str | None
    quantity: str  # 6 decimals, in `unit`s
    unit: str
    unit_price: str  # USD per unit, 6 decimals
    amount_micros: int

    @property
    def amount(self) -> str:
        return format_micros(self.amount_micros)


@dataclass(frozen=True)
class Invoice:
    invoice_id: str
    user_id: int
    period_start: datetime
    period_end: datetime
    status: InvoiceStatus
    lines: tuple[InvoiceLine, ...]

    @property
    def total_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)

    @property
    def total(self) -> str:
        return format_micros(self.total_micros)


def build_invoice(s: Session, user_id: int, start: datetime, now: datetime) -> Invoice | None:
    """The invoice of `user_id` for the week that starts at `start` (a Monday 00:00 UTC), as of
    `now`; None when the user has no usage that week (or the week has not begun)."""
    start = week_start(start)
    end = start + WEEK
    if start > utc(now):
        return None
    pieces = list(gpu_pieces(s, start, end, user_id))
    sums = token_sums(s, start, end, user_id)
    if not pieces and not sums:
        return None
    infos = deployment_infos(s, {p.deploy_id for p in pieces} | {t.deploy_id for t in sums})
    owners = deployment_owners(s, {t.deploy_id for t in sums})

    def name(deploy_id: str) -> str:
        info = infos.get(deploy_id)
        return info.name if info else deploy_id

    # GPU time: one line per deployment, GPU type and price (a price change mid-week makes two
    # lines, each at the price its rows were metered at).
    # The amount is priced once per line (GPU-hours x rate, one rounding), not summed from the
    # periods' rounded costs.
    gpu: dict[tuple[str, str, int], int] = {}
    for p in pieces:
        key = (p.deploy_id, p.gpu_type, p.usd_per_hour_micros)
        gpu[key] = gpu.get(key, 0) + p.gpu_ms
    lines: list[InvoiceLine] = []
    for (deploy_id, gpu_type, price), gpu_ms in sorted(
        gpu.items(), key=lambda kv: (name(kv[0][0]), kv[0][1], kv[0][2])
    ):
        micro_hours = div_round_half_up(gpu_ms * 1_000_000, MS_PER_HOUR)
        cost = gpu_cost_micros(gpu_ms, price)
        if micro_hours == 0 and cost == 0:
            continue
        lines.append(
            InvoiceLine(
                description=f"{name(deploy_id)}: {gpu_type} GPU time",
                deploy_id=deploy_id,
                gpu=gpu_type,
                quantity=format_micros(micro_hours),
                unit=GPU_UNIT,
                unit_price=format_micros(price),
                amount_micros=cost,
            )
        )
    # Tokens: one line per shared endpoint (a deployment of someone else's); a user's calls to
    # their own deployments are paid by its GPU time.
    for t in sorted(sums, key=lambda t: name(t.deploy_id)):
        tokens = t.prompt_tokens + t.completion_tokens
        own = owners.get(t.deploy_id) == user_id
        if (own and t.cost_micros == 0) or (tokens == 0 and t.cost_micros == 0):
            continue
        per_million = div_round_half_up(t.cost_micros * TOKENS_PER_UNIT, tokens) if tokens else 0
        lines.append(
            InvoiceLine(
                description=(
                    f"{name(t.deploy_id)}: {t.prompt_tokens} prompt + "
                    f"{t.completion_tokens} completion tokens"
                ),
                deploy_id=t.deploy_id,
                gpu=None,
                # tokens / 1M with 6 decimals is exact: the count itself, read as millionths.
                quantity=format_micros(tokens),
                unit=TOKEN_UNIT,
                unit_price=format_micros(per_million),
                amount_micros=t.cost_micros,
            )
        )
    status: InvoiceStatus = "open" if end > utc(now) else "final"
    return Invoice(invoice_id(user_id, start), user_id, start, end, status, tuple(lines))


def _usage_span(s: Session, user_id: int) -> tuple[datetime, datetime] | None:
    """The first and last instants of a user's usage rows."""
    g_lo, g_hi = s.execute(
        select(func.min(GpuUsage.period_start), func.max(GpuUsage.period_start)).where(
            GpuUsage.user_id == user_id
        )
    ).one()
    r_lo, r_hi = s.execute(
        select(func.min(RequestUsage.at), func.max(RequestUsage.at)).where(
            RequestUsage.user_id == user_id
        )
    ).one()
    lows = [utc(v) for v in (g_lo, r_lo) if v is not None]
    highs = [utc(v) for v in (g_hi, r_hi) if v is not None]
    if not lows:
        return None
    return min(lows), max(highs)


def list_invoices(s: Session, user_id: int, now: datetime) -> list[Invoice]:
    """The user's invoices, newest first: every week with usage, up to the current one."""
    span = _usage_span(s, user_id)
    if span is None:
        return []
    first, last = week_start(span[0]), week_start(min(span[1], utc(now)))
    out: list[Invoice] = []
    week = last
    while week >= first:
        invoice = build_invoice(s, user_id, week, now)
        if invoice is not None:
            out.append(invoice)
        week -= WEEK
    return out
