"""Weekly invoices built from usage rows: Monday 00:00 UTC boundaries, the open week and closed
ones, a price change mid-week, the seed's weekend example."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelhost.store.db import Database
from modelhost.store.invoices import (
    build_invoice,
    invoice_id,
    list_invoices,
    parse_invoice_id,
    week_start,
)
from modelhost.store.usage_queries import usage
from tests.pg import pg_url
from tests.unit.test_usage_queries import add_gpu, add_hours, add_request, db, migrated, world

__all__ = ["db", "migrated", "pg_url"]  # the fixtures

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)
NEXT_MONDAY = MONDAY + timedelta(days=7)
LATER = NEXT_MONDAY + timedelta(days=30)  # "now", with both weeks closed


def test_week_start_is_monday_midnight_utc() -> None:
    assert week_start(MONDAY) == MONDAY
    assert week_start(MONDAY - timedelta(microseconds=1)) == MONDAY - timedelta(days=7)
    assert week_start(MONDAY + timedelta(days=6, hours=23, minutes=59)) == MONDAY
    # An offset is an instant like any other: Monday 01:00 at +02:00 is Sunday 23:00 UTC.
    plus_two = datetime.fromisoformat("2026-11-09T01:00:00+02:00")
    assert week_start(plus_two) == MONDAY


def test_invoice_ids_round_trip_and_refuse_other_strings() -> None:
    assert invoice_id(7, MONDAY) == "inv_7_20261102"
    assert parse_invoice_id("inv_7_20261102") == (7, MONDAY)
    assert parse_invoice_id("inv_7_20261103") is None  # a Tuesday
    assert parse_invoice_id("inv_7_20261399") is None
    assert parse_invoice_id("inv_x_20261102") is None
    assert parse_invoice_id("../inv_7_20261102") is None


def test_sunday_2359_and_monday_0000_land_in_different_weeks(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        alice = ids["alice"]
        sunday = NEXT_MONDAY - timedelta(minutes=1)
        add_gpu(s, "r1", "dep_a", alice, sunday, NEXT_MONDAY)  # 1 GPU-minute at 2 USD/h
        add_gpu(s, "r1", "dep_a", alice, NEXT_MONDAY, NEXT_MONDAY + timedelta(minutes=1))
    with db.session() as s:
        first = build_invoice(s, alice, MONDAY, LATER)
        second = build_invoice(s, alice, NEXT_MONDAY, LATER)
        listed = list_invoices(s, alice, LATER)
    assert first is not None and second is not None
    assert first.invoice_id == f"inv_{alice}_20261102"
    assert first.period_end == NEXT_MONDAY == second.period_start
    for inv in (first, second):
        assert [(ln.quantity, ln.unit, ln.unit_price, ln.amount) for ln in inv.lines] == [
            ("0.016667", "GPU-hour", "2.000000", "0.033333")
        ]
    assert [i.invoice_id for i in listed] == [second.invoice_id, first.invoice_id]


def test_the_current_week_is_open_and_earlier_ones_final(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        add_hours(s, "r1", "dep_a", ids["alice"], MONDAY + timedelta(hours=9), 1)
        add_hours(s, "r1", "dep_a", ids["alice"], NEXT_MONDAY + timedelta(hours=9), 1)
    now = NEXT_MONDAY + timedelta(hours=12)
    with db.session() as s:
        invoices = list_invoices(s, ids["alice"], now)
        closed_before = build_invoice(s, ids["alice"], MONDAY, now)
    assert [(i.period_start, i.status, i.total) for i in invoices] == [
        (NEXT_MONDAY, "open", "2.000000"),
        (MONDAY, "final", "2.000000"),
    ]
    # More usage in the open week changes it and leaves the closed one as it was.
    with db.session() as s:
        add_hours(s, "r2", "dep_a", ids["alice"], NEXT_MONDAY + timedelta(hours=10), 0.5)
    with db.session() as s:
        open_now = build_invoice(s, ids["alice"], NEXT_MONDAY, now + timedelta(hours=1))
        closed_after = build_invoice(s, ids["alice"], MONDAY, now + timedelta(hours=1))
    assert open_now is not None and open_now.total == "3.000000"
    assert closed_after == closed_before


def test_a_week_without_usage_has_no_invoice(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        add_hours(s, "r1", "dep_a", ids["alice"], MONDAY, 0.5)
        add_hours(s, "r1", "dep_a", ids["alice"], MONDAY + timedelta(days=14), 0.5)
    with db.session() as s:
        assert build_invoice(s, ids["alice"], NEXT_MONDAY, LATER) is None
        assert build_invoice(s, ids["bob"], MONDAY, LATER) is None
        assert build_invoice(s, ids["alice"], LATER + timedelta(days=7), LATER) is None
        assert len(list_invoices(s, ids["alice"], LATER)) == 2
        assert list_invoices(s, ids["bob"], LATER) == []


def test_a_price_change_mid_week_keeps_each_rows_price(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        add_hours(s, "r1", "dep_a", ids["alice"], MONDAY, 1, num_gpus=2, usd_per_hour="2")
        # The operator raised the A100's price on Wednesday; later rows carry the new price.
        add_hours(
            s, "r1", "dep_a", ids["alice"], MONDAY + timedelta(days=2), 1,
            num_gpus=2, usd_per_hour="2.5",
        )  # fmt: skip
    with db.session() as s:
        inv = build_invoice(s, ids["alice"], MONDAY, LATER)
    assert inv is not None and inv.status == "final"
    assert [(ln.gpu, ln.quantity, ln.unit_price, ln.amount) for ln in inv.lines] == [
        ("A100-80GB", "2.000000", "2.000000", "4.000000"),
        ("A100-80GB", "2.000000", "2.500000", "5.000000"),
    ]
    assert inv.total == "9.000000"


def test_shared_endpoint_tokens_are_a_line_and_own_calls_are_not(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        at = MONDAY + timedelta(hours=3)
        add_request(s, "q1", at, ids["alice"], "dep_s", 300_000, 100_000, "0.6")
        add_request(s, "q2", at, ids["alice"], "dep_s", 100_000, 500_000, "1.2")
        add_request(s, "q3", at, ids["alice"], "dep_a", 50, 50)  # her own deployment
    with db.session() as s:
        inv = build_invoice(s, ids["alice"], MONDAY, LATER)
    assert inv is not None
    (line,) = inv.lines
    assert line.deploy_id == "dep_s" and line.gpu is None
    assert (line.quantity, line.unit, line.unit_price, line.amount) == (
        "1.000000",
        "1M tokens",
        "1.800000",
        "1.800000",
    )
    assert "admin/shared" in line.description and "400000 prompt" in line.description


def test_the_seed_weekend_example(db: Database) -> None:
    """2 GPUs at 2 USD/GPU-hour left up from Friday 17:00 to Monday 09:00: 64 h x 2 x 2 =
    256 USD, 220 USD in the week that ends at Monday 00:00 UTC and 36 USD in the next."""
    friday_5pm = MONDAY + timedelta(days=4, hours=17)
    with db.session() as s:
        ids = world(s)
        add_hours(s, "r1", "dep_a", ids["alice"], friday_5pm, 64, num_gpus=2, usd_per_hour="2")
    with db.session() as s:
        first = build_invoice(s, ids["alice"], MONDAY, LATER)
        second = build_invoice(s, ids["alice"], NEXT_MONDAY, LATER)
    assert first is not None and second is not None
    assert [(ln.quantity, ln.amount) for ln in first.lines] == [("110.000000", "220.000000")]
    assert [(ln.quantity, ln.amount) for ln in second.lines] == [("18.000000", "36.000000")]
    assert first.total_micros + second.total_micros == 256_000_000


def test_usage_over_a_week_agrees_with_its_invoice(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        # Odd minutes at odd prices: each period's cost rounds; the totals must still agree.
        add_hours(s, "r1", "dep_a", ids["alice"], MONDAY, 0.5, num_gpus=3, usd_per_hour="2.1")
        add_hours(
            s, "r2", "dep_a", ids["alice"], MONDAY + timedelta(days=1), 0.3, usd_per_hour="0.7"
        )
        add_request(s, "q1", MONDAY + timedelta(hours=1), ids["alice"], "dep_s", 7, 9, "0.000123")
    with db.session() as s:
        inv = build_invoice(s, ids["alice"], MONDAY, LATER)
        week = usage(s, MONDAY, NEXT_MONDAY, "deployment", ids["alice"])
        by_day = usage(s, MONDAY, NEXT_MONDAY, "day", ids["alice"])
    assert inv is not None
    assert week.total_cost_micros == inv.total_micros == by_day.total_cost_micros
