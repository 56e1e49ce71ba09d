"""Usage, read side: GPU time and tokens between two instants, grouped by deployment, day, GPU
type, API token or adapter, for one user or for all.

The meters (the write side) record `gpu_usage` rows (one per replica and UTC minute, each with
the price per GPU-hour and the cost at metering time) and `request_usage` rows (one per
request). Money is integer micro-dollars throughout and becomes a 6-decimal string only at the
edge (`usd`). A GPU period partly inside [start, end) counts its overlapping share of `gpu_ms`,
in integer arithmetic: the shares of adjacent windows add up to the whole. GPU time is priced
at each period's own price, once per group and price (GPU-hours x rate, one rounding), as the
invoices price it: usage by deployment over a week and that week's invoice agree exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal, get_args

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelhost.domain.money import format_micros, gpu_cost_micros
from modelhost.store.tables import Adapter, ApiToken, Deployment, GpuUsage, RequestUsage, User

GroupBy = Literal["deployment", "day", "gpu", "api_token", "adapter"]
GROUP_BYS: tuple[str, ...] = get_args(GroupBy)

# The key of usage that a grouping cannot attribute: GPU time has no API token or adapter, and
# a request may come without either.
NO_KEY = "-"
NO_TOKEN = "(no API token: GPU time)"
NO_ADAPTER = "(no adapter: GPU time, base model)"


def usd(micros: int) -> str:
    """Micro-dollars as the API writes money: a decimal string with 6 decimals."""
    return format_micros(micros)


def utc(dt: datetime) -> datetime:
    """Aware UTC (SQLite hands back naive datetimes; they were stored as UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _ms(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def share(value: int, period_ms: int, lo_ms: int, hi_ms: int) -> int:
    """The part of `value`, spread evenly over a period of `period_ms`, that falls in
    [lo_ms, hi_ms) of it. Integer arithmetic whose pieces add up exactly to `value`."""
    if period_ms <= 0:  # an instant: all of it, once
        return value if lo_ms == 0 else 0
    return value * hi_ms // period_ms - value * lo_ms // period_ms


@dataclass(frozen=True)
class GpuPiece:
    """The part of one `gpu_usage` row inside a window (and inside one UTC day when asked)."""

    deploy_id: str
    user_id: int
    gpu_type: str
    start: datetime
    gpu_ms: int
    usd_per_hour_micros: int


def _day_cuts(lo: datetime, hi: datetime) -> Iterator[datetime]:
    day = datetime(lo.year, lo.month, lo.day, tzinfo=UTC) + timedelta(days=1)
    while day < hi:
        yield day
        day += timedelta(days=1)


def gpu_pieces(
    s: Session,
    start: datetime,
    end: datetime,
    user_id: int | None,
    *,
    split_days: bool = False,
) -> Iterator[GpuPiece]:
    """GPU periods overlapping [start, end) of one user (None: everyone), clipped to it."""
    start, end = utc(start), utc(end)
    g = GpuUsage
    q = select(
        g.deploy_id,
        g.user_id,
        g.gpu_type,
        g.period_start,
        g.period_end,
        g.gpu_ms,
        g.usd_per_hour_micros,
    ).where(g.period_end > start, g.period_start < end)
    if user_id is not None:
        q = q.where(g.user_id == user_id)
    for row in s.execute(q.order_by(g.period_start, g.id)):
        p_start, p_end = utc(row.period_start), utc(row.period_end)
        lo, hi = max(p_start, start), min(p_end, end)
        if hi <= lo and p_end > p_start:
            continue
        cuts = [lo, *(_day_cuts(lo, hi) if split_days else ()), hi]
        period_ms = _ms(p_end - p_start)
        for a, b in pairwise(cuts):
            a_ms, b_ms = _ms(a - p_start), _ms(b - p_start)
            yield GpuPiece(
                deploy_id=row.deploy_id,
                user_id=row.user_id,
                gpu_type=row.gpu_type,
                start=a,
                gpu_ms=share(int(row.gpu_ms), period_ms, a_ms, b_ms),
                usd_per_hour_micros=int(row.usd_per_hour_micros),
            )


@dataclass(frozen=True)
class TokenSum:
    deploy_id: str
    api_token_id: str | None
    adapter_id: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


def token_sums(
    s: Session,
    start: datetime,
    end: datetime,
    user_id: int | None,
    *,
    by_token: bool = False,
    by_adapter: bool = False,
) -> list[TokenSum]:
    """Requests in [start, end) of one user (None: everyone), summed per deployment (and per
    API token and/or adapter when asked)."""
    r = RequestUsage
    keys: list[Any] = [r.deploy_id]
    if by_token:
        keys.append(r.api_token_id)
    if by_adapter:
        keys.append(r.adapter_id)
    q = select(
        *keys,
        func.coalesce(func.sum(r.prompt_tokens), 0),
        func.coalesce(func.sum(r.completion_tokens), 0),
        func.coalesce(func.sum(r.cost_micros), 0),
    ).where(r.at >= utc(start), r.at < utc(end))
    if user_id is not None:
        q = q.where(r.user_id == user_id)
    out = []
    for row in s.execute(q.group_by(*keys)):
        values = list(row)
        deploy_id = values.pop(0)
        token_id = values.pop(0) if by_token else None
        adapter_id = values.pop(0) if by_adapter else None
        prompt, completion, cost = (int(v) for v in values)
        out.append(TokenSum(deploy_id, token_id, adapter_id, prompt, completion, cost))
    return out


@dataclass
class UsageRow:
    """One group's usage; money in micro-dollars. GPU time is kept per price (each period's
    own price per GPU-hour at metering time) and priced once per price: the cost is exactly
    GPU-hours x rate, with one rounding, whatever the number of periods."""

    key: str
    name: str
    gpu_ms_by_price: dict[int, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_cost_micros: int = 0

    def add_gpu(self, gpu_ms: int, usd_per_hour_micros: int) -> None:
        self.gpu_ms_by_price[usd_per_hour_micros] = (
            self.gpu_ms_by_price.get(usd_per_hour_micros, 0) + gpu_ms
        )

    @property
    def gpu_ms(self) -> int:
        return sum(self.gpu_ms_by_price.values())

    @property
    def gpu_cost_micros(self) -> int:
        return sum(gpu_cost_micros(ms, price) for price, ms in self.gpu_ms_by_price.items())

    @property
    def total_cost_micros(self) -> int:
        return self.gpu_cost_micros + self.token_cost_micros

    @property
    def gpu_seconds(self) -> float:
        # Milliseconds are exact in a float up to 2**53 ms (285,000 years of one GPU).
        return self.gpu_ms / 1000


@dataclass
class Usage:
    start: datetime
    end: datetime
    rows: list[UsageRow] = field(default_factory=list)

    @property
    def total_cost_micros(self) -> int:
        return sum(r.total_cost_micros for r in self.rows)


@dataclass(frozen=True)
class DeploymentInfo:
    name: str  # <owner>/<model_name>
    gpu: str


def deployment_infos(s: Session, deploy_ids: set[str]) -> dict[str, DeploymentInfo]:
    """Names and GPU types of deployments, deleted ones (and deleted owners') included."""
    if not deploy_ids:
        return {}
    q = (
        select(Deployment.id, Deployment.model_name, Deployment.config, User.username)
        .join(User, User.id == Deployment.owner_id)
        .where(Deployment.id.in_(deploy_ids))
    )
    return {
        row.id: DeploymentInfo(f"{row.username}/{row.model_name}", str(row.config.get("gpu", "")))
        for row in s.execute(q)
    }


def deployment_owners(s: Session, deploy_ids: set[str]) -> dict[str, int]:
    if not deploy_ids:
        return {}
    q = select(Deployment.id, Deployment.owner_id).where(Deployment.id.in_(deploy_ids))
    return {row.id: row.owner_id for row in s.execute(q)}


def _token_names(s: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return {
        row.id: row.name
        for row in s.execute(select(ApiToken.id, ApiToken.name).where(ApiToken.id.in_(ids)))
    }


def _adapter_names(s: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    q = (
        select(Adapter.id, Adapter.name, User.username)
        .join(User, User.id == Adapter.owner_id)
        .where(Adapter.id.in_(ids))
    )
    return {row.id: f"{row.username}/{row.name}" for row in s.execute(q)}


def _days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at UTC midnights."""
    cuts = [start, *_day_cuts(start, end), end]
    return list(pairwise(cuts))


def usage(
    s: Session,
    start: datetime,
    end: datetime,
    group_by: GroupBy = "deployment",
    user_id: int | None = None,
) -> Usage:
    """Usage in [start, end) of `user_id` (None: every user), grouped by `group_by`; rows
    ordered by key. A user's usage is the GPU time of the deployments they own and the tokens
    of the requests they make."""
    start, end = utc(start), utc(end)
    rows: dict[str, UsageRow] = {}

    def row(key: str, name: str) -> UsageRow:
        if key not in rows:
            rows[key] = UsageRow(key=key, name=name)
        return rows[key]

    pieces = list(gpu_pieces(s, start, end, user_id, split_days=group_by == "day"))
    if group_by == "day":
        for p in pieces:
            day = p.start.strftime("%Y-%m-%d")
            r = row(day, day)
            r.add_gpu(p.gpu_ms, p.usd_per_hour_micros)
        for lo, hi in _days(start, end):
            day = lo.strftime("%Y-%m-%d")
            for t in token_sums(s, lo, hi, user_id):
                r = row(day, day)
                r.prompt_tokens += t.prompt_tokens
                r.completion_tokens += t.completion_tokens
                r.token_cost_micros += t.cost_micros
        return Usage(start, end, [rows[k] for k in sorted(rows)])

    sums = token_sums(
        s,
        start,
        end,
        user_id,
        by_token=group_by == "api_token",
        by_adapter=group_by == "adapter",
    )
    infos = deployment_infos(s, {p.deploy_id for p in pieces} | {t.deploy_id for t in sums})

    def gpu_key(p: GpuPiece) -> tuple[str, str]:
        if group_by == "deployment":
            info = infos.get(p.deploy_id)
            return p.deploy_id, info.name if info else p.deploy_id
        if group_by == "gpu":
            return p.gpu_type, p.gpu_type
        return NO_KEY, NO_TOKEN if group_by == "api_token" else NO_ADAPTER

    token_names = _token_names(s, {t.api_token_id for t in sums if t.api_token_id})
    adapter_names = _adapter_names(s, {t.adapter_id for t in sums if t.adapter_id})

    def token_key(t: TokenSum) -> tuple[str, str]:
        if group_by == "deployment":
            info = infos.get(t.deploy_id)
            return t.deploy_id, info.name if info else t.deploy_id
        if group_by == "gpu":
            gpu = infos[t.deploy_id].gpu if t.deploy_id in infos else NO_KEY
            return gpu, gpu
        if group_by == "api_token":
            if t.api_token_id is None:
                return NO_KEY, NO_TOKEN
            return t.api_token_id, token_names.get(t.api_token_id, t.api_token_id)
        if t.adapter_id is None:
            return NO_KEY, NO_ADAPTER
        name = adapter_names.get(t.adapter_id, t.adapter_id)
        return name, name

    for p in pieces:
        r = row(*gpu_key(p))
        r.add_gpu(p.gpu_ms, p.usd_per_hour_micros)
    for t in sums:
        r = row(*token_key(t))
        r.prompt_tokens += t.prompt_tokens
        r.completion_tokens += t.completion_tokens
        r.token_cost_micros += t.cost_micros
    return Usage(start, end, [rows[k] for k in sorted(rows)])


def username_of(s: Session, user_id: int) -> str | None:
    """A user's name, a deleted user's included (their usage is still theirs)."""
    name = s.scalar(select(User.username).where(User.id == user_id))
    return None if name is None else str(name)
