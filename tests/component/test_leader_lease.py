"""The leader lease in a real database (store/leases.py, serve/leadership.py), on SQLite and on
PostgreSQL (tests/pg.py; skipped without a server): two holders, expiry by the database's
clock, takeover, a deposed holder that cannot renew, fencing while the database hangs, and the
routing table followers read from the replica rows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelhost.domain.leader_lease import LeaseTiming, Outcome
from modelhost.orchestrator.backends.local_process import proc_start_ticks
from modelhost.serve.leadership import LeaseWatcher, routing_rows, this_machine
from modelhost.store import leases
from modelhost.store.db import Database
from modelhost.store.tables import Deployment, Replica, User
from tests.pg import pg_url  # noqa: F401  (a fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lease.db'}"
    else:
        url = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://")
    database = Database(url)
    database.migrate()
    try:
        yield database
    finally:
        database.close()


def acquire(db: Database, holder: str, ttl: float) -> bool:
    with db.session() as s:
        return leases.try_acquire(s, holder, ttl)


def lease(db: Database) -> leases.LeaseRow:
    with db.session() as s:
        row = leases.read(s)
    assert row is not None
    return row


def test_one_holder_at_a_time_then_takeover_after_expiry(db: Database) -> None:
    assert acquire(db, "a", 0.5)
    assert not acquire(db, "b", 10.0)  # held by a
    assert acquire(db, "a", 0.5)  # a renews
    first = lease(db)
    assert first.holder == "a" and 0 < first.expires_in_s <= 0.5
    time.sleep(0.7)  # by the database's clock, a's lease has run out
    assert lease(db).expires_in_s < 0
    assert acquire(db, "b", 10.0)
    taken = lease(db)
    assert taken.holder == "b" and taken.term == first.term + 1
    # Fencing in the database: the deposed holder can no longer renew.
    assert not acquire(db, "a", 10.0)
    assert lease(db).holder == "b"


def test_release_hands_over_at_once(db: Database) -> None:
    assert acquire(db, "a", 30.0)
    with db.session() as s:
        assert not leases.release(s, "b")  # not b's to give
        assert leases.release(s, "a")
    assert acquire(db, "b", 30.0)


def test_concurrent_attempts_elect_exactly_one(db: Database) -> None:
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def contend(name: str) -> None:
        barrier.wait()
        if acquire(db, name, 30.0):
            wins.append(name)

    threads = [threading.Thread(target=contend, args=(f"p{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert lease(db).holder == wins[0]


FAST = LeaseTiming(ttl_s=1.5, renew_every_s=0.2, margin_s=0.3)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    async def elected(self) -> None:
        self.events.append(("elected", time.monotonic()))

    async def deposed(self) -> None:
        self.events.append(("deposed", time.monotonic()))


async def until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_watchers_take_over_from_a_dead_leader_within_the_bound(db: Database) -> None:
    async def scenario() -> None:
        ra, rb = Recorder(), Recorder()
        a = LeaseWatcher(db, FAST, ra.elected, ra.deposed, holder="a")
        b = LeaseWatcher(db, FAST, rb.elected, rb.deposed, holder="b")
        await a.acquire_once()
        assert a.leading and ra.events[0][0] == "elected"
        ta = asyncio.create_task(a.run())
        tb = asyncio.create_task(b.run())
        await asyncio.sleep(FAST.ttl_s * 1.5)  # a renews throughout: b never leads
        assert a.leading and not b.leading and rb.events == []
        ta.cancel()  # a dies: no release, its lease runs out in the database
        died = time.monotonic()
        await until(lambda: b.leading, FAST.takeover_bound_s + 1.0)
        assert time.monotonic() - died <= FAST.takeover_bound_s + 0.5
        assert [e for e, _ in rb.events] == ["elected"]
        tb.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)

    asyncio.run(scenario())


def test_a_leader_whose_database_hangs_stops_at_its_deadline(db: Database) -> None:
    """Fencing: renewals that never answer do not keep a leader acting past
    `began + ttl - margin`, and another process wins only after that."""

    async def scenario() -> None:
        ra, rb = Recorder(), Recorder()
        a = LeaseWatcher(db, FAST, ra.elected, ra.deposed, holder="a")
        b = LeaseWatcher(db, FAST, rb.elected, rb.deposed, holder="b")
        await a.acquire_once()
        won_at = a.state.last_attempt_at
        assert won_at is not None
        release = threading.Event()

        def hang() -> Outcome:
            release.wait(10)
            return Outcome.FAILED

        a._attempt = hang  # type: ignore[method-assign]
        ta = asyncio.create_task(a.run())
        tb = asyncio.create_task(b.run())
        await until(lambda: any(e == "deposed" for e, _ in ra.events), 5)
        deposed_at = next(t for e, t in ra.events if e == "deposed")
        assert deposed_at <= won_at + FAST.ttl_s - FAST.margin_s + 0.2
        await until(lambda: b.leading, 5)
        elected_b = next(t for e, t in rb.events if e == "elected")
        assert elected_b > deposed_at
        release.set()
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)

    asyncio.run(scenario())


def test_followers_route_from_the_ready_replica_rows(db: Database) -> None:
    now = datetime.now(UTC)
    config = {
        "gpu": "CPU",
        "num_gpus": 1,
        "max_batch_size": 7,
        "engine": "simulator",
        "max_active_adapters": 3,
    }
    with db.session() as s:
        user = User(username="u", is_admin=False, gpu_limit=4, created_at=now)
        s.add(user)
        s.flush()
        dep = Deployment(
            id="d1",
            owner_id=user.id,
            model_name="m",
            config=config,
            settings={},
            status="ready",
            desired_state="running",
            desired_replicas=2,
            generation=1,
            created_at=now,
            updated_at=now,
        )
        s.add(dep)
        s.flush()
        for rid, state, port, exited in [
            ("r1", "ready", 5001, None),
            ("r2", "starting", 5002, None),
            ("r3", "ready", 5003, now),  # exited
            ("r4", "ready", 5004, None),
        ]:
            s.add(
                Replica(
                    id=rid,
                    deploy_id="d1",
                    generation=1,
                    state=state,
                    port=port,
                    devices=["cpu:0"],
                    started_at=now,
                    exited_at=exited,
                    engine="simulator" if rid != "r4" else None,
                    host="localhost" if rid == "r4" else None,
                )
            )
    table = routing_rows(db)
    assert list(table) == ["d1"]
    [one, four] = table["d1"]
    assert (one.replica_id, one.url, one.max_batch_size) == ("r1", "http://127.0.0.1:5001", 7)
    assert (one.engine, one.max_active_adapters, one.generation) == ("simulator", 3, 1)
    # A row written before the engine column existed falls back on the deployment's config.
    assert four.replica_id == "r4" and four.engine == "simulator"
    # A replica on another node (Ray) is reached at the address its row names.
    assert four.url == "http://localhost:5004"


def test_a_holder_gone_from_this_machine_is_taken_over_at_once(db: Database) -> None:
    machine = this_machine()
    if not machine:
        pytest.skip("no /proc here: the lease is always waited out")
    proc = subprocess.Popen(["true"])
    ticks = proc_start_ticks(proc.pid) or 0
    proc.wait()
    gone = f"h/{proc.pid}/{ticks}/{machine}/x"
    me = Recorder()

    async def attempt(take: bool) -> bool:
        w = LeaseWatcher(db, FAST, me.elected, me.deposed, take_from_dead_local=take)
        await w.acquire_once()
        return w.leading

    assert acquire(db, gone, 30.0)
    assert not asyncio.run(attempt(False))  # waits the TTL out
    assert asyncio.run(attempt(True))
    # A holder that still runs here (this very test process) is never taken from.
    alive = f"h/{os.getpid()}/{proc_start_ticks(os.getpid())}/{machine}/y"
    with db.session() as s:
        leases.release(s, lease(db).holder or "")
    assert acquire(db, alive, 30.0)
    assert not asyncio.run(attempt(True))
    # Nor one from another machine, whatever its pid.
    with db.session() as s:
        leases.release(s, alive)
    assert acquire(db, f"h/{proc.pid}/{ticks}/elsewhere.1/z", 30.0)
    assert not asyncio.run(attempt(True))
