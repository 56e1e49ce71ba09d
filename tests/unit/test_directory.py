"""The in-memory directory the request path reads (issue 10, item 4): what a snapshot holds,
how a process keeps it current (its own writes at once, other processes' writes by polling the
database's revision), and that a failing or stalled database leaves the last snapshot served."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelhost.directory import live
from modelhost.directory.live import Directory
from modelhost.directory.snapshot import (
    AdapterEntry,
    DeploymentEntry,
    Snapshot,
    TokenRow,
    UserRow,
)
from modelhost.security.tokens import hash_token
from modelhost.store import revision, users
from modelhost.store.db import Database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def dep(id: str, owner_id: int, owner: str, name: str, public: bool = False) -> DeploymentEntry:
    return DeploymentEntry(id, owner_id, owner, name, public, "running", "ready", None, None, T0)


# ---- Snapshot ---------------------------------------------------------------------------------


def test_a_snapshot_serves_live_tokens_deployments_and_adapters() -> None:
    snap = Snapshot(
        7,
        users=[UserRow(1, "ann", False, 4, False), UserRow(2, "bob", True, 4, True)],
        tokens=[TokenRow("h-ann", "t1", 1, None), TokenRow("h-bob", "t2", 2, None)],
        deployments=[dep("d1", 1, "ann", "m"), dep("d2", 2, "bob", "m")],
        adapters=[
            AdapterEntry("a1", 1, "ann", "ad", "d1", False),
            AdapterEntry("a2", 1, "ann", "orphan", "d9", False),  # its base is gone
        ],
    )
    who = snap.principal("h-ann")
    assert who is not None and who.username == "ann" and who.token_id == "t1"
    assert snap.principal("h-bob") is None  # a deleted user's tokens stop working
    assert snap.deployment_named("ann", "m") is not None
    # A deleted owner's deployment is found by id (it drains) but not by name.
    assert snap.deployment("d2") is not None and snap.deployment_named("bob", "m") is None
    assert snap.adapter_named("ann", "ad") is not None
    assert snap.adapter_named("ann", "orphan") is None
    assert snap.counts() == {"tokens": 1, "deployments": 2, "adapters": 1}


# ---- Directory against a real database --------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    database.migrate()
    yield database
    database.close()


def issue(db: Database) -> tuple[str, str]:
    """A user and its token: (plaintext, token id)."""
    with db.session() as s:
        user = users.create_user(s, "ann", 1)
        row, plaintext = users.issue_token(s, user, "t")
        return plaintext, row.id


def revoke_elsewhere(db_path: Path, token_id: str) -> None:
    """What another server process does: a write this process's ORM events never see (the
    database's trigger still moves the revision)."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "UPDATE api_tokens SET revoked_at = CURRENT_TIMESTAMP WHERE id = ?", (token_id,)
        )
    conn.close()


def test_this_process_writes_are_in_the_directory_when_the_commit_returns(db: Database) -> None:
    directory = Directory(db)
    directory.refresh()
    token, token_id = issue(db)
    who = directory.snapshot.principal(hash_token(token))
    assert who is not None
    with db.session() as s:
        users.revoke_token(s, who.user_id, token_id)
    assert directory.snapshot.principal(hash_token(token)) is None


def test_a_reload_happens_only_when_the_revision_moved(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, token_id = issue(db)
    directory = Directory(db)
    assert directory.refresh()  # the first load
    loads: list[int] = []
    real_load = live.load

    def counted(d: Database) -> Snapshot:
        loads.append(1)
        return real_load(d)

    monkeypatch.setattr(live, "load", counted)
    assert not directory.refresh() and not loads  # nothing changed: one tiny query
    revoke_elsewhere(tmp_path / "m.db", token_id)
    assert directory.refresh() and loads == [1]
    assert directory.snapshot.principal(hash_token(token)) is None


def test_last_use_writes_do_not_move_the_revision(db: Database, tmp_path: Path) -> None:
    _, token_id = issue(db)
    with db.session() as s:
        before = revision.read(s)
    conn = sqlite3.connect(tmp_path / "m.db")
    with conn:
        conn.execute(
            "UPDATE api_tokens SET last_used_at = CURRENT_TIMESTAMP WHERE id = ?", (token_id,)
        )
    conn.close()
    with db.session() as s:
        assert revision.read(s) == before


async def test_the_poller_sees_other_processes_writes(db: Database, tmp_path: Path) -> None:
    token, token_id = issue(db)
    directory = Directory(db, poll_s=0.05)
    directory.refresh()
    directory.start()
    try:
        revoke_elsewhere(tmp_path / "m.db", token_id)
        started = time.monotonic()
        while directory.snapshot.principal(hash_token(token)) is not None:
            assert time.monotonic() - started < 5, "the poller did not reload"
            await asyncio.sleep(0.01)
    finally:
        await directory.stop()


async def test_a_failing_database_leaves_the_last_snapshot_served(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, token_id = issue(db)
    directory = Directory(db, poll_s=0.02)
    directory.refresh()
    snapshot = directory.snapshot
    real_session = db.session

    def down() -> None:
        raise OSError("database unavailable")

    monkeypatch.setattr(db, "session", down)
    directory.start()
    try:
        await asyncio.sleep(0.2)  # several failed polls
        assert directory.snapshot is snapshot
        assert directory.snapshot.principal(hash_token(token)) is not None
        # A miss during the outage answers from what there is, without hanging.
        assert (await directory.fresh()).principal("unknown") is None
        revoke_elsewhere(tmp_path / "m.db", token_id)  # made while this process cannot read
        monkeypatch.setattr(db, "session", real_session)
        started = time.monotonic()
        while directory.snapshot.principal(hash_token(token)) is not None:
            assert time.monotonic() - started < 5, "no reload once the database answered"
            await asyncio.sleep(0.01)
    finally:
        await directory.stop()


# ---- misses: one re-check at a time, bounded ------------------------------------------------


class Stalled:
    """Stands in for `Directory.refresh`: each call blocks until released, and is counted."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.release = threading.Event()
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, check: object = None) -> bool:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        if check is not None:
            check.started = time.monotonic()  # type: ignore[attr-defined]
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return False


async def test_concurrent_misses_share_one_check(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = Directory(db)
    stalled = Stalled(directory)
    monkeypatch.setattr(directory, "refresh", stalled)
    waiting = [asyncio.create_task(directory.fresh()) for _ in range(20)]
    await asyncio.sleep(0.05)
    stalled.release.set()
    await asyncio.gather(*waiting)
    assert stalled.calls == 1


async def test_a_stalled_database_holds_one_thread_however_many_misses(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "MISS_WAIT_S", 0.1)
    directory = Directory(db)
    stalled = Stalled(directory)
    monkeypatch.setattr(directory, "refresh", stalled)
    started = time.monotonic()
    for _ in range(5):  # misses one after another, each after the running check began
        await asyncio.gather(*(directory.fresh() for _ in range(5)))
    # Each wave answered after MISS_WAIT_S from the snapshot there was, and never more than
    # one check ran: the others wait their turn.
    assert time.monotonic() - started < 3
    assert stalled.calls == 1 and stalled.most_at_once == 1
    stalled.release.set()
    # When the stall ends, the misses that came during it get one more check, after it.
    deadline = time.monotonic() + 5
    while stalled.calls < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert stalled.calls == 2 and stalled.most_at_once == 1
