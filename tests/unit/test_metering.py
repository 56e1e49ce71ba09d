"""GPU metering: the interval math (table tests) and the meter over a real SQLite store:
idempotent passes, a restart that continues without double count, exits, prices kept."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from modelhost.config import Settings
from modelhost.domain.metering import (
    PERIOD_MS,
    PeriodUsage,
    floor_period,
    from_ms,
    periods_since,
    split_periods,
    to_ms,
)
from modelhost.domain.money import gpu_cost_micros
from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.serve.gpu_meter import GpuMeter
from modelhost.store.db import Database
from modelhost.store.metering import gpu_totals
from modelhost.store.tables import GpuUsage, Replica
from tests.metering_helpers import metering_db, obs

# 2026-01-01 12:00:00 UTC, a minute boundary.
T0 = 1_767_268_800.0
T0_MS = int(T0 * 1000)
M = PERIOD_MS


def P(rid: str, start: int, gpu_ms: int) -> PeriodUsage:
    return PeriodUsage(rid, start, start + M, gpu_ms)


@pytest.mark.parametrize(
    ("start", "end", "gpus", "expected"),
    [
        # Inside one minute.
        (T0_MS + 10_000, T0_MS + 40_000, 1, [P("r", T0_MS, 30_000)]),
        # Exactly one minute, aligned.
        (T0_MS, T0_MS + M, 2, [P("r", T0_MS, 2 * M)]),
        # Across a boundary.
        (
            T0_MS + 50_000,
            T0_MS + M + 5_000,
            2,
            [P("r", T0_MS, 20_000), P("r", T0_MS + M, 10_000)],
        ),
        # Three periods, the middle one whole.
        (
            T0_MS + 59_999,
            T0_MS + 2 * M + 1,
            1,
            [P("r", T0_MS, 1), P("r", T0_MS + M, M), P("r", T0_MS + 2 * M, 1)],
        ),
        # Empty, inverted, no GPU.
        (T0_MS, T0_MS, 1, []),
        (T0_MS + 5, T0_MS, 1, []),
        (T0_MS, T0_MS + 5, 0, []),
    ],
)
def test_split_periods(start: int, end: int, gpus: int, expected: list[PeriodUsage]) -> None:
    rows = split_periods("r", start, end, gpus)
    assert rows == expected
    assert sum(r.gpu_ms for r in rows) == max(0, end - start) * gpus if gpus else True


def test_periods_since_keeps_the_open_period_and_later() -> None:
    start, end = T0_MS + 30_000, T0_MS + 3 * M + 10_000
    everything = split_periods("r", start, end, 1)
    assert periods_since("r", start, end, 1, None) == everything
    # Written up to inside the second minute: that minute and the later ones.
    again = periods_since("r", start, end, 1, T0_MS + M + 1)
    assert [p.period_start_ms for p in again] == [T0_MS + M, T0_MS + 2 * M, T0_MS + 3 * M]


@pytest.mark.parametrize(
    ("t", "ms"), [(T0, T0_MS), (T0 + 0.0019, T0_MS + 1), (0.0, 0), (1.5, 1500)]
)
def test_to_ms_truncates(t: float, ms: int) -> None:
    assert to_ms(t) == ms


def test_from_ms_and_floor() -> None:
    assert from_ms(T0_MS) == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert from_ms(T0_MS + 1_234) == datetime(2026, 1, 1, 12, 0, 1, 234_000, tzinfo=UTC)
    assert floor_period(T0_MS + 59_999) == T0_MS
    assert floor_period(T0_MS + M) == T0_MS + M


# ---- the meter over a store -------------------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Replicas:
    def __init__(self) -> None:
        self.items: list[ReplicaObservation] = []

    def __call__(self) -> Sequence[ReplicaObservation]:
        return list(self.items)


def _db(tmp_path: Path) -> tuple[Database, int]:
    return metering_db(f"sqlite:///{tmp_path / 'm.db'}", num_gpus=2, engine="simulator")


def _totals(db: Database) -> dict[str, tuple[int, int]]:
    with db.session() as s:
        return dict(gpu_totals(s))


def _rows(db: Database) -> list[GpuUsage]:
    with db.session() as s:
        return list(s.scalars(select(GpuUsage).order_by(GpuUsage.period_start)))


SETTINGS = Settings(gpu_prices="A100-80GB=2.0")
PRICE = 2_000_000


def test_a_pass_written_twice_counts_once(tmp_path: Path) -> None:
    db, user_id = _db(tmp_path)
    replicas, clock = Replicas(), Clock(T0 + 150.0)
    replicas.items = [obs("r1", T0 + 30.0, ReplicaState.STARTING)]
    meter = GpuMeter(db, SETTINGS, replicas, clock=clock)
    assert meter.run_once() == 3  # 12:00:30 -> 12:02:30: three minutes touched
    first = _totals(db)
    # Each minute's cost rounds on its own: 60 s, 120 s, 60 s of GPU time.
    cost = sum(gpu_cost_micros(ms, PRICE) for ms in (60_000, 120_000, 60_000))
    assert first == {"r1": (120_000 * 2, cost)}
    meter.run_once()
    GpuMeter(db, SETTINGS, replicas, clock=clock).run_once()  # a fresh meter, same instant
    assert _totals(db) == first
    rows = _rows(db)
    assert [r.gpu_ms for r in rows] == [60_000, 120_000, 60_000]
    assert {(r.user_id, r.deploy_id, r.gpu_type, r.num_gpus) for r in rows} == {
        (user_id, "d1", "A100-80GB", 2)
    }
    db.close()


def test_a_restart_continues_without_double_count(tmp_path: Path) -> None:
    db, _ = _db(tmp_path)
    replicas, clock = Replicas(), Clock(T0 + 45.0)
    replicas.items = [obs("r1", T0)]
    GpuMeter(db, SETTINGS, replicas, clock=clock).run_once()
    clock.t = T0 + 100.0
    GpuMeter(db, SETTINGS, replicas, clock=clock).run_once()  # the server restarted
    clock.t = T0 + 200.0
    after = GpuMeter(db, SETTINGS, replicas, clock=clock)
    after.run_once()
    after.run_once()
    assert _totals(db)["r1"][0] == 200_000 * 2
    # The replica exits; its run ends at exited_at, not at the meter's later pass.
    replicas.items = [obs("r1", T0, ReplicaState.STOPPED, exited_at=T0 + 230.5)]
    clock.t = T0 + 300.0
    after.run_once()
    after.run_once()
    assert _totals(db)["r1"][0] == 230_500 * 2
    db.close()


def test_a_replica_that_vanished_is_billed_to_its_recorded_exit(tmp_path: Path) -> None:
    db, _ = _db(tmp_path)
    replicas, clock = Replicas(), Clock(T0 + 10.0)
    replicas.items = [obs("r1", T0)]
    meter = GpuMeter(db, SETTINGS, replicas, clock=clock)
    meter.run_once()
    # Stopped and forgotten between two passes; the reconciler recorded its exit.
    with db.session() as s:
        s.add(
            Replica(
                id="r1",
                deploy_id="d1",
                generation=1,
                state="stopped",
                devices=[],
                started_at=from_ms(T0_MS),
                exited_at=from_ms(T0_MS + 25_000),
            )
        )
    replicas.items = []
    clock.t = T0 + 40.0
    meter.run_once()
    assert _totals(db)["r1"][0] == 25_000 * 2
    clock.t = T0 + 90.0
    assert meter.run_once() == 0  # done with it
    db.close()


def test_a_period_keeps_its_first_price_and_never_shrinks(tmp_path: Path) -> None:
    db, _ = _db(tmp_path)
    replicas, clock = Replicas(), Clock(T0 + 30.0)
    replicas.items = [obs("r1", T0)]
    GpuMeter(db, SETTINGS, replicas, clock=clock).run_once()
    dearer = Settings(gpu_prices="A100-80GB=4.0")
    clock.t = T0 + 90.0
    GpuMeter(db, dearer, replicas, clock=clock).run_once()
    first, second = _rows(db)
    assert (first.gpu_ms, first.usd_per_hour_micros) == (120_000, PRICE)
    assert first.cost_micros == gpu_cost_micros(120_000, PRICE) == 66_667
    assert (second.gpu_ms, second.usd_per_hour_micros) == (60_000, 4_000_000)
    # An earlier clock (a meter behind) never lowers what was written.
    clock.t = T0 + 70.0
    GpuMeter(db, dearer, replicas, clock=clock).run_once()
    assert [r.gpu_ms for r in _rows(db)] == [120_000, 60_000]
    db.close()


def test_only_replicas_holding_devices_cost_and_failed_starts_cost_nothing(
    tmp_path: Path,
) -> None:
    db, _ = _db(tmp_path)
    replicas, clock = Replicas(), Clock(T0 + 60.0)
    replicas.items = [
        obs("starting", T0 + 30.0, ReplicaState.STARTING),
        obs("draining", T0 + 50.0, ReplicaState.DRAINING),
        obs("never-ran", T0 + 10.0, ReplicaState.FAILED, exited_at=T0 + 10.0),
        obs("other", T0, deploy_id="unknown"),
    ]
    GpuMeter(db, SETTINGS, replicas, clock=clock).run_once()
    assert _totals(db) == {
        "starting": (60_000, gpu_cost_micros(60_000, PRICE)),
        "draining": (20_000, gpu_cost_micros(20_000, PRICE)),
    }
    db.close()
