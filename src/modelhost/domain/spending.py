"""Spending limits: a hard cap per user per calendar month (UTC), in integer micro-dollars.

What a user has spent in a month is their GPU time (metered by the control plane, per
checkpoint) plus what they paid for tokens on other owners' priced deployments. A request is
admitted only if its *maximum* cost fits: spent + reserved + max cost <= limit, where
`reserved` holds the maximum cost of the user's requests in flight; when the answer is complete
its reservation is replaced by its actual cost. So however many requests run at once, what is
recorded never passes the limit. Once spent reaches the limit every request is refused, and
the control plane stops the user's deployments until the limit is raised or the month ends.

A request's maximum cost: prompt tokens at most its body's size in bytes (a token is at least
one byte of text in the byte-level tokenizers LLMs use), plus `TEMPLATE_ALLOWANCE` for what a
chat template adds to chat requests, and completion tokens at most its `max_tokens` (or
`max_new_tokens`), or `DEFAULT_COMPLETION_BOUND` when it names none.

`SpendBook` is the in-memory ledger of one gateway process; gateway/redis_limits.py keeps the
same ledger in Redis for several processes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from modelhost.domain.deployment_config import TokenPricing
from modelhost.domain.money import token_cost_micros

# Tokens a chat template may add around the messages (roles, a default system prompt).
TEMPLATE_ALLOWANCE = 1024
# Completion tokens assumed for a request that names no max_tokens.
DEFAULT_COMPLETION_BOUND = 32768
# The alerts a new limit gets unless it names its own.
DEFAULT_ALERT_AT = (0.5, 0.8, 1.0)


def month_of(now: datetime) -> str:
    """The calendar month (UTC) `now` falls in: `"2026-11"`."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    return f"{now.year:04d}-{now.month:02d}"


def month_start(now: datetime) -> datetime:
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def next_month_start(now: datetime) -> datetime:
    start = month_start(now)
    if start.month == 12:
        return datetime(start.year + 1, 1, 1, tzinfo=UTC)
    return datetime(start.year, start.month + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SpendingLimit:
    """A user's limit (their own word), the admin's cap on it, and the alert fractions."""

    limit_micros: int | None = None
    cap_micros: int | None = None
    alert_at: tuple[float, ...] = DEFAULT_ALERT_AT

    @property
    def effective_micros(self) -> int | None:
        """What is enforced: the lower of the user's limit and the admin's cap."""
        values = [v for v in (self.limit_micros, self.cap_micros) if v is not None]
        return min(values) if values else None


def validate_alert_at(raw: Any) -> tuple[float, ...]:
    """`alert_at`: fractions in (0, 1], at most 10; ValueError otherwise."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ValueError("alert_at must be a list of fractions in (0, 1]")
    if len(raw) > 10:
        raise ValueError("alert_at takes at most 10 fractions")
    out: set[float] = set()
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("alert_at must be a list of fractions in (0, 1]")
        if not 0 < value <= 1:
            raise ValueError("each alert_at fraction must be in (0, 1]")
        out.add(float(value))
    return tuple(sorted(out))


def alerts_due(
    spent: int, limit: int, alert_at: Sequence[float], already: Sequence[float]
) -> list[float]:
    """The alert fractions that `spent` reached and that were not sent yet this month
    (compared exactly: the fraction as the decimal it was written as)."""
    sent = {Decimal(str(a)) for a in already}
    return [
        f
        for f in sorted(alert_at)
        if Decimal(str(f)) not in sent and spent >= Decimal(str(f)) * limit
    ]


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def completion_bound(body: Mapping[str, Any]) -> int:
    """The most completion tokens a (validated) request may generate, by its own word."""
    for name in ("max_completion_tokens", "max_tokens"):
        found = _int_field(body, name)
        if found is not None:
            return found
    params = body.get("parameters")
    if isinstance(params, Mapping):
        found = _int_field(params, "max_new_tokens")
        if found is not None:
            return found
    return DEFAULT_COMPLETION_BOUND


def prompt_bound(body: Mapping[str, Any], body_bytes: int) -> int:
    """The most prompt tokens a request may have: its body's bytes (the JSON around the text
    covers the few special tokens an engine adds), plus `TEMPLATE_ALLOWANCE` when a chat
    template wraps it."""
    params = body.get("parameters")
    templated = "messages" in body or (
        isinstance(params, Mapping) and params.get("apply_chat_template") is True
    )
    return body_bytes + (TEMPLATE_ALLOWANCE if templated else 0)


def max_cost_micros(pricing: TokenPricing | None, body: Mapping[str, Any], body_bytes: int) -> int:
    """The most a request may cost at `pricing` (0 with none)."""
    if pricing is None:
        return 0
    return token_cost_micros(
        prompt_bound(body, body_bytes),
        completion_bound(body),
        pricing.prompt_micros_per_1m,
        pricing.completion_micros_per_1m,
    )


@dataclass(frozen=True)
class Standing:
    """A user's month as the ledger sees it."""

    gpu_micros: int
    token_micros: int
    reserved_micros: int

    @property
    def spent_micros(self) -> int:
        return self.gpu_micros + self.token_micros


def admits(standing: Standing, limit: int | None, cost: int) -> bool:
    """Whether a request of maximum cost `cost` fits under `limit`: nothing is admitted once
    the limit is reached, and nothing whose maximum cost would take it past."""
    if limit is None:
        return True
    spent = standing.spent_micros
    return spent < limit and spent + standing.reserved_micros + cost <= limit


@dataclass
class _Month:
    gpu: int = 0
    tokens: int = 0
    reserved: int = 0


class SpendBook:
    """One process's ledger: per (user, month) the GPU cost (set from the database), the token
    cost (seeded from the database once, then counted here as requests settle) and what is
    reserved by requests in flight. Thread-safe (the refresher runs in a thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._months: dict[tuple[int, str], _Month] = {}
        self._seeded: set[str] = set()

    def seeded(self, month: str) -> bool:
        with self._lock:
            return month in self._seeded

    def seed(self, month: str, tokens: Mapping[int, int]) -> None:
        """The month's token costs per user as the database holds them, read before any
        request of that month settled here (the first refresh at start, and at each month's
        turn)."""
        with self._lock:
            if month in self._seeded:
                return
            self._seeded.add(month)
            for user_id, micros in tokens.items():
                self._months.setdefault((user_id, month), _Month()).tokens += micros
            # Months gone by are no longer asked about.
            for key in [k for k in self._months if k[1] < month]:
                del self._months[key]
            self._seeded = {m for m in self._seeded if m >= month}

    def set_gpu(self, month: str, gpu: Mapping[int, int]) -> None:
        with self._lock:
            for user_id, micros in gpu.items():
                self._months.setdefault((user_id, month), _Month()).gpu = micros

    def standing(self, user_id: int, month: str) -> Standing:
        with self._lock:
            m = self._months.get((user_id, month)) or _Month()
            return Standing(m.gpu, m.tokens, m.reserved)

    def reserve(self, user_id: int, month: str, limit: int | None, cost: int) -> bool:
        with self._lock:
            m = self._months.setdefault((user_id, month), _Month())
            if not admits(Standing(m.gpu, m.tokens, m.reserved), limit, cost):
                return False
            m.reserved += cost
            return True

    def settle(self, user_id: int, month: str, reserved: int, actual: int) -> None:
        """Replace a reservation with what the request actually cost (0: released)."""
        with self._lock:
            m = self._months.setdefault((user_id, month), _Month())
            m.reserved = max(0, m.reserved - reserved)
            m.tokens += actual
