"""The leader's adoption sweep (serve/control.py `adopt_late_rows`): several servers on one
database, a just-deposed leader writes the row of a replica it was starting after the new leader
adopted. The sweep hands the backend exactly the live rows it does not watch (so the replica is
taken back, or its row closed, instead of running unwatched or dying as an orphan) and lets the
backend sweep its orphans even when there are none."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from modelhost.orchestrator.backends.base import AdoptResult, ReplicaRecord
from modelhost.serve.control import adopt_late_rows


def rec(replica_id: str) -> ReplicaRecord:
    return ReplicaRecord(
        replica_id=replica_id,
        deploy_id="d1",
        generation=1,
        pid=0,
        port=0,
        log_path="",
        devices=("A100-80GB#0",),
        proc_start_ticks=0,
        started_at=0.0,
    )


class Backend:
    def __init__(self, watched: Sequence[str], answer: AdoptResult) -> None:
        self.watched, self.answer = list(watched), answer
        self.adopted: list[list[str]] = []

    def observe(self) -> list[Any]:
        return [SimpleNamespace(replica_id=r) for r in self.watched]

    def adopt(self, records: Sequence[ReplicaRecord]) -> AdoptResult:
        self.adopted.append([r.replica_id for r in records])
        return self.answer


class Store:
    def __init__(self, rows: Sequence[str], log: list[str]) -> None:
        self.rows, self.log = list(rows), log
        self.recorded: list[AdoptResult] = []

    def replica_records(self) -> list[ReplicaRecord]:
        self.log.append("rows")
        return [rec(r) for r in self.rows]

    def record_adoption(self, result: AdoptResult) -> None:
        self.recorded.append(result)


def reconciler(store: Store, backend: Backend) -> Any:
    return cast(Any, SimpleNamespace(store=store, backend=backend))


def test_a_late_row_is_handed_to_the_backend_alone_and_its_adoption_recorded() -> None:
    log: list[str] = []
    store = Store(["r1", "late"], log)
    backend = Backend(["r1"], AdoptResult(("late",), ()))
    adopt_late_rows(reconciler(store, backend))
    assert backend.adopted == [["late"]]  # never r1 again: no second copy, no event
    assert store.recorded == [AdoptResult(("late",), ())]


def test_without_late_rows_the_backend_still_sweeps_its_orphans_and_nothing_is_written() -> None:
    store = Store(["r1"], [])
    backend = Backend(["r1", "r2"], AdoptResult((), ()))
    adopt_late_rows(reconciler(store, backend))
    assert backend.adopted == [[]]
    assert store.recorded == []


def test_the_rows_are_read_before_the_backends_replicas() -> None:
    """A replica this leader starts is the backend's before its row exists: reading the rows
    first, a row can never name a replica the backend watches but did not report yet."""
    log: list[str] = []
    store = Store(["new"], log)

    class Starting(Backend):
        def observe(self) -> list[Any]:
            log.append("observe")
            return super().observe()

    backend = Starting(["new"], AdoptResult((), ()))
    adopt_late_rows(reconciler(store, backend))
    assert log == ["rows", "observe"]
    assert backend.adopted == [[]]


def test_a_stored_demand_stamp_reads_as_utc_epoch_seconds() -> None:
    from datetime import UTC, datetime

    from modelhost.serve.autoscale_glue import epoch

    aware = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
    # SQLite hands the same instant back naive; both read the same.
    assert epoch(aware) == epoch(aware.replace(tzinfo=None)) == aware.timestamp()
