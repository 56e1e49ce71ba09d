"""API tokens' last use is recorded at most once a minute, off the request path."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from modelhost.store import revision, users
from modelhost.store.db import Database
from modelhost.store.tables import ApiToken
from modelhost.store.token_usage import TokenUsage

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _db(tmp_path: Path) -> tuple[Database, str]:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    with db.session() as s:
        user = users.create_user(s, "u", 1)
        token, _ = users.issue_token(s, user, "t")
        return db, token.id


def _stored(db: Database, token_id: str) -> datetime | None:
    with db.session() as s:
        value = s.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token_id))
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def test_a_use_is_written_and_the_next_minute_of_uses_is_not(tmp_path: Path) -> None:
    db, token_id = _db(tmp_path)
    clock = Clock()
    usage = TokenUsage(db, clock=clock)
    usage.seen(token_id, None)
    # Later uses in the same minute (the request saw the stored value before the write).
    for seconds in (1, 30, 59):
        clock.now = T0 + timedelta(seconds=seconds)
        assert not usage.due(token_id, None, clock.now)
        usage.seen(token_id, None)
    usage.close()
    assert _stored(db, token_id) == T0
    db.close()


def test_a_use_after_the_interval_is_written_again(tmp_path: Path) -> None:
    db, token_id = _db(tmp_path)
    clock = Clock()
    usage = TokenUsage(db, clock=clock)
    usage.seen(token_id, None)
    clock.now = T0 + timedelta(seconds=61)
    assert usage.due(token_id, T0, clock.now)
    usage.seen(token_id, T0)
    usage.close()
    assert _stored(db, token_id) == T0 + timedelta(seconds=61)
    db.close()


def test_the_stored_value_throttles_across_restarts() -> None:
    # A fresh TokenUsage (a restarted server) trusts what the database says.
    usage = TokenUsage(Database("sqlite://"), clock=Clock())
    assert not usage.due("tok", T0 - timedelta(seconds=10), T0)
    assert not usage.due("tok", (T0 - timedelta(seconds=10)).replace(tzinfo=None), T0)
    assert usage.due("tok", T0 - timedelta(seconds=60), T0)
    assert usage.due("tok", None, T0)


def test_a_failing_database_costs_the_caller_nothing(tmp_path: Path) -> None:
    db, token_id = _db(tmp_path)
    db.close()
    (tmp_path / "m.db").unlink()
    (tmp_path / "m.db").mkdir()  # no database can be opened there now
    usage = TokenUsage(Database(f"sqlite:///{tmp_path / 'm.db'}"), clock=Clock())
    usage.seen(token_id, None)  # returns at once; the write fails in the background
    assert not usage.close(timeout_s=0.2)  # tried until the deadline, then given up
    assert not usage.due(token_id, None, T0)


def _tokens(db: Database, n: int) -> list[str]:
    with db.session() as s:
        user = users.create_user(s, "many", 1)
        return [users.issue_token(s, user, f"t{i}")[0].id for i in range(n)]


def test_uses_of_many_tokens_are_written_in_batches_and_all_on_close(tmp_path: Path) -> None:
    db, _ = _db(tmp_path)
    ids = _tokens(db, 200)
    clock = Clock()
    usage = TokenUsage(db, clock=clock)
    for i, token_id in enumerate(ids):
        clock.now = T0 + timedelta(milliseconds=i)
        usage.seen(token_id, None)
    assert usage.close()  # a clean shutdown: everything queued is written
    assert usage.writes.batches < len(ids)  # queued while a batch was written: batched
    for i, token_id in enumerate(ids):
        assert _stored(db, token_id) == T0 + timedelta(milliseconds=i)
    usage.seen(ids[0], None)  # after close: ignored, not an error
    db.close()


def test_a_locked_database_delays_the_write_and_loses_nothing(tmp_path: Path) -> None:
    db, token_id = _db(tmp_path)
    usage = TokenUsage(db, clock=Clock())
    locker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # every writer waits (the database's busy timeout)
    try:
        started = time.monotonic()
        usage.seen(token_id, None)
        assert time.monotonic() - started < 0.5  # the caller does not wait for the lock
        assert not usage.flush(timeout_s=0.3)
        assert _stored(db, token_id) is None
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert usage.flush(timeout_s=30)
    assert _stored(db, token_id) == T0
    usage.close()
    db.close()


def test_writing_last_use_does_not_move_the_directory_revision(tmp_path: Path) -> None:
    db, token_id = _db(tmp_path)
    with db.session() as s:
        before = revision.read(s)
    calls: list[int] = []
    watcher = lambda: calls.append(1)  # noqa: E731
    revision.watch(db.engine, watcher)
    try:
        usage = TokenUsage(db, clock=Clock())
        usage.seen(token_id, None)
        assert usage.close()
    finally:
        revision.unwatch(db.engine, watcher)
    with db.session() as s:
        assert revision.read(s) == before
    assert calls == []  # no directory re-check after the write either
    db.close()
