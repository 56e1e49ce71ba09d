"""Admission by the caller's limits, before a request takes a replica slot: the spending limit
(its maximum cost reserved, domain/spending.py) and the rate limits (domain/rate_limits.py).

Which rate limits count a request:
- the caller's own (`PUT /v1/users/{username}` `rate_limits`): all the user's requests;
- the API token's own (`rate_limits` when the token was created): that token's requests alone;
- the deployment's (`rate_limits` on the deployment), for callers other than its owner: each
  calling user's requests to it.

The counts live in this process (one gateway) or, with `MODELHOST_REDIS_URL`, in Redis, shared
by every gateway process (gateway/redis_limits.py). The ledger's GPU cost and its starting token
cost come from the database, read by `refresh` off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from modelhost.domain.money import format_micros
from modelhost.domain.rate_limits import Check, Decision, WindowCounter
from modelhost.domain.spending import (
    SpendBook,
    Standing,
    max_cost_micros,
    month_of,
    month_start,
)
from modelhost.errors import RateLimited, SpendingLimitReached
from modelhost.gateway.resolve import Target
from modelhost.gateway.usage_meter import Tokens
from modelhost.store import spending as spending_store
from modelhost.store.clock import utcnow
from modelhost.store.db import Database
from modelhost.store.users import Principal

log = logging.getLogger(__name__)

# How often each process re-reads the GPU cost from the database.
REFRESH_S = 1.0


class RateCounter(Protocol):
    async def admit(self, checks: Sequence[Check], request_id: str) -> Decision: ...

    async def add_tokens(self, checks: Sequence[Check], request_id: str, tokens: int) -> None: ...


class SpendLedger(Protocol):
    async def seeded(self, month: str) -> bool: ...

    async def seed(self, month: str, tokens: Mapping[int, int]) -> None: ...

    async def set_gpu(self, month: str, gpu: Mapping[int, int]) -> None: ...

    async def standing(self, user_id: int, month: str) -> Standing: ...

    async def reserve(
        self, user_id: int, month: str, limit: int | None, cost: int, request_id: str
    ) -> bool: ...

    async def settle(
        self, user_id: int, month: str, request_id: str, reserved: int, actual: int
    ) -> None: ...


class MemoryRateCounter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._counter = WindowCounter()
        self._clock = clock

    async def admit(self, checks: Sequence[Check], request_id: str) -> Decision:
        return self._counter.admit(checks, self._clock())

    async def add_tokens(self, checks: Sequence[Check], request_id: str, tokens: int) -> None:
        self._counter.add_tokens(checks, tokens, self._clock())


class MemorySpendLedger:
    def __init__(self) -> None:
        self.book = SpendBook()

    async def seeded(self, month: str) -> bool:
        return self.book.seeded(month)

    async def seed(self, month: str, tokens: Mapping[int, int]) -> None:
        self.book.seed(month, tokens)

    async def set_gpu(self, month: str, gpu: Mapping[int, int]) -> None:
        self.book.set_gpu(month, gpu)

    async def standing(self, user_id: int, month: str) -> Standing:
        return self.book.standing(user_id, month)

    async def reserve(
        self, user_id: int, month: str, limit: int | None, cost: int, request_id: str
    ) -> bool:
        return self.book.reserve(user_id, month, limit, cost)

    async def settle(
        self, user_id: int, month: str, request_id: str, reserved: int, actual: int
    ) -> None:
        self.book.settle(user_id, month, reserved, actual)


def rate_checks(who: Principal, target: Target) -> list[Check]:
    checks: list[Check] = []
    if who.rate_limits is not None:
        checks.append(Check(f"u:{who.user_id}", who.rate_limits))
    if who.token_rate_limits is not None and who.token_id:
        checks.append(Check(f"t:{who.token_id}", who.token_rate_limits))
    if target.rate_limits is not None and who.user_id != target.owner_id:
        checks.append(Check(f"d:{target.deploy_id}:u:{who.user_id}", target.rate_limits))
    return checks


@dataclass
class Admission:
    """An admitted request's hold on its caller's limits, until `finish` (called once, by the
    proxy's completion callback or on failure; later calls do nothing)."""

    limits: Limits
    user_id: int
    month: str
    request_id: str
    reserved: int
    checks: list[Check]
    # The x-ratelimit-* headers for the answer.
    headers: dict[str, str] = field(default_factory=dict)
    _done: bool = False

    def finish(self, tokens: Tokens | None, cost: int) -> None:
        if self._done:
            return
        self._done = True
        self.limits.settle_later(self, tokens, cost)


class Limits:
    def __init__(
        self,
        rates: RateCounter,
        ledger: SpendLedger,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.rates = rates
        self.ledger = ledger
        self._wall = wall
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(
        self,
        who: Principal,
        target: Target,
        body: Mapping[str, Any],
        body_bytes: int,
        request_id: str,
    ) -> Admission:
        """Reserve the request's maximum cost and count it against its rate limits, or raise
        SpendingLimitReached (402) or RateLimited (429) having held nothing."""
        month = month_of(self._wall())
        pricing = target.pricing if who.user_id != target.owner_id else None
        cost = max_cost_micros(pricing, body, body_bytes)
        limit = who.spend_limit_micros
        reserved = 0
        # Costs are counted even for users with no limit: a limit set later this month starts
        # from what they spent.
        if limit is not None or cost > 0:
            if not await self.ledger.reserve(who.user_id, month, limit, cost, request_id):
                raise await self._spending_refusal(who, month, cost)
            reserved = cost
        checks = rate_checks(who, target)
        admission = Admission(self, who.user_id, month, request_id, reserved, checks)
        if checks:
            try:
                decision = await self.rates.admit(checks, request_id)
            except BaseException:
                admission.finish(None, 0)
                raise
            admission.headers = decision.headers(checks)
            if not decision.admitted:
                admission.finish(None, 0)
                raise RateLimited(
                    "rate limit reached: too many requests or tokens in the last minute; "
                    "retry after the time in Retry-After",
                    retry_after=decision.retry_after_s,
                    headers=admission.headers,
                )
        return admission

    async def _spending_refusal(
        self, who: Principal, month: str, cost: int
    ) -> SpendingLimitReached:
        standing = await self.ledger.standing(who.user_id, month)
        limit = who.spend_limit_micros or 0
        spent = standing.spent_micros
        if spent >= limit:
            why = f"spent {format_micros(spent)} USD"
        else:
            why = (
                f"spent {format_micros(spent)} USD and {format_micros(standing.reserved_micros)} "
                f"held by requests in flight; this request may cost up to {format_micros(cost)}"
            )
        return SpendingLimitReached(
            f"spending limit of {format_micros(limit)} USD for {month} reached ({why}); "
            "raise it with PUT /v1/me/spending-limit",
        )

    def settle_later(self, admission: Admission, tokens: Tokens | None, cost: int) -> None:
        """Settle off the caller's stack (completion callbacks are synchronous)."""
        if not admission.reserved and not cost and not (tokens and admission.checks):
            return
        task = asyncio.ensure_future(self._settle(admission, tokens, cost))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, a: Admission, tokens: Tokens | None, cost: int) -> None:
        try:
            if a.reserved or cost:
                await self.ledger.settle(a.user_id, a.month, a.request_id, a.reserved, cost)
            if tokens is not None and a.checks:
                used = tokens.prompt + tokens.completion
                await self.rates.add_tokens(a.checks, a.request_id, used)
        except Exception:
            log.exception("settling request %s failed", a.request_id)

    # ---- the ledger's figures from the database (off the request path) ---------------------
    async def refresh(self, db: Database) -> None:
        """Set the GPU cost this month of each user with a limit from the database (no one
        else's is ever checked), and seed the month's token costs of every user once (at
        start, and when the month turns: a limit set later starts from them)."""
        now = self._wall()
        month, since = month_of(now), month_start(now)
        seed = not await self.ledger.seeded(month)

        def read() -> tuple[dict[int, int], dict[int, int] | None]:
            with db.session() as s:
                limited = [u.id for u in spending_store.limited_users(s)]
                gpu = spending_store.gpu_cost_by_user(s, since, limited)
                tokens = spending_store.token_cost_by_user(s, since) if seed else None
            return gpu, tokens

        gpu, tokens = await asyncio.to_thread(read)
        if tokens is not None:
            await self.ledger.seed(month, tokens)
        await self.ledger.set_gpu(month, gpu)

    async def run(self, db: Database, interval_s: float = REFRESH_S) -> None:
        failing = False
        while True:
            try:
                await self.refresh(db)
                if failing:
                    log.info("spending figures read from the database again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.exception("reading spending figures failed; retrying")
                failing = True
            await asyncio.sleep(interval_s)

    async def drain(self) -> None:
        """Wait for settlements in progress (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
