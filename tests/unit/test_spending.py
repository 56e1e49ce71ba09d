"""Spending-limit rules: months, the maximum cost of a request, admission against reservations,
the ledger under concurrency, alerts."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from modelhost.domain.deployment_config import TokenPricing
from modelhost.domain.spending import (
    DEFAULT_COMPLETION_BOUND,
    TEMPLATE_ALLOWANCE,
    SpendBook,
    SpendingLimit,
    Standing,
    admits,
    alerts_due,
    completion_bound,
    max_cost_micros,
    month_of,
    month_start,
    next_month_start,
    prompt_bound,
)


@pytest.mark.parametrize(
    ("now", "month", "start", "following"),
    [
        (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), "2026-11", (2026, 11), (2026, 12)),
        (datetime(2026, 12, 31, 12, tzinfo=UTC), "2026-12", (2026, 12), (2027, 1)),
        (datetime(2027, 1, 1, tzinfo=UTC), "2027-01", (2027, 1), (2027, 2)),
    ],
)
def test_months_are_calendar_months_in_utc(
    now: datetime, month: str, start: tuple[int, int], following: tuple[int, int]
) -> None:
    assert month_of(now) == month
    assert month_start(now) == datetime(*start, 1, tzinfo=UTC)
    assert next_month_start(now) == datetime(*following, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9, "max_tokens": 7}, 9),
        ({"parameters": {"max_new_tokens": 11}}, 11),
        ({}, DEFAULT_COMPLETION_BOUND),
        ({"max_tokens": None}, DEFAULT_COMPLETION_BOUND),
    ],
)
def test_completion_bound(body: dict[str, object], expected: int) -> None:
    assert completion_bound(body) == expected


def test_prompt_bound_adds_the_template_allowance_to_chat_only() -> None:
    assert prompt_bound({"prompt": "hi"}, 40) == 40
    assert prompt_bound({"messages": []}, 40) == 40 + TEMPLATE_ALLOWANCE
    assert prompt_bound({"parameters": {"apply_chat_template": True}}, 40) == 40 + (
        TEMPLATE_ALLOWANCE
    )


def test_max_cost_is_exact_micros() -> None:
    pricing = TokenPricing(prompt_micros_per_1m=1_000_000, completion_micros_per_1m=2_000_000)
    body = {"prompt": "hello", "max_tokens": 10}
    # 100 prompt tokens at most (the body's bytes) x 1 USD/1M + 10 x 2 USD/1M = 120 micros.
    assert max_cost_micros(pricing, body, 100) == 120
    assert max_cost_micros(None, body, 100) == 0


@pytest.mark.parametrize(
    ("standing", "limit", "cost", "ok"),
    [
        (Standing(0, 0, 0), None, 10**12, True),
        (Standing(40, 50, 0), 100, 10, True),
        (Standing(40, 50, 0), 100, 11, False),
        (Standing(40, 50, 5), 100, 6, False),
        (Standing(60, 40, 0), 100, 0, False),  # reached: even a free request is refused
        (Standing(0, 99, 0), 100, 0, True),
    ],
)
def test_admits(standing: Standing, limit: int | None, cost: int, ok: bool) -> None:
    assert admits(standing, limit, cost) is ok


def test_concurrent_reservations_never_pass_the_limit() -> None:
    book = SpendBook()
    book.seed("2026-11", {1: 0})
    admitted: list[int] = []
    lock = threading.Lock()

    def request() -> None:
        if book.reserve(1, "2026-11", 1000, 30):
            with lock:
                admitted.append(1)
            book.settle(1, "2026-11", 30, 25)

    threads = [threading.Thread(target=request) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    standing = book.standing(1, "2026-11")
    assert standing.reserved_micros == 0
    assert standing.token_micros == 25 * len(admitted) <= 1000
    # It stops only when no more request could fit.
    assert 1000 - standing.token_micros < 30


def test_seed_counts_once_per_month_and_drops_months_gone_by() -> None:
    book = SpendBook()
    book.seed("2026-11", {1: 500})
    book.seed("2026-11", {1: 500})
    book.set_gpu("2026-11", {1: 100})
    assert book.standing(1, "2026-11") == Standing(100, 500, 0)
    book.seed("2026-12", {})
    assert book.standing(1, "2026-11") == Standing(0, 0, 0)
    assert book.seeded("2026-12") and not book.seeded("2026-11")


def test_the_effective_limit_is_the_lower_of_the_users_and_the_cap() -> None:
    assert SpendingLimit(None, None).effective_micros is None
    assert SpendingLimit(50, None).effective_micros == 50
    assert SpendingLimit(None, 30).effective_micros == 30
    assert SpendingLimit(50, 30).effective_micros == 30


@pytest.mark.parametrize(
    ("spent", "already", "due"),
    [
        (49, [], []),
        (50, [], [0.5]),
        (80, [0.5], [0.8]),
        (100, [], [0.5, 0.8, 1.0]),
        (100, [0.5, 0.8, 1.0], []),
    ],
)
def test_alerts_due(spent: int, already: list[float], due: list[float]) -> None:
    assert alerts_due(spent, 100, (0.5, 0.8, 1.0), already) == due
