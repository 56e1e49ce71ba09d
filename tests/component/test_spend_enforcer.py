"""The spending limit's control loop on a real database (SQLite and PostgreSQL) with an injected
clock: alerts once per fraction and month (events and a real webhook), the stop at the limit, the
restart when the limit is raised or the month turns, an owner's own stop left alone."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from modelhost.serve.spend_enforcer import SpendEnforcer
from modelhost.store.db import Database
from modelhost.store.metering import RequestTokens, insert_request_usage
from modelhost.store.tables import Deployment, Event, SpendAlert, User
from tests.metering_helpers import metering_db
from tests.pg import pg_url  # noqa: F401  (fixture)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_and_user(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, int]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        url = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://", 1)
    db, user_id = metering_db(url, num_gpus=1, engine="simulator")
    try:
        yield db, user_id
    finally:
        db.close()


class Hook:
    """A real HTTP endpoint on 127.0.0.1 that keeps what is POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def _spend(db: Database, user_id: int, micros: int, at: datetime, n: int) -> None:
    with db.session() as s:
        insert_request_usage(
            s,
            [
                RequestTokens(
                    request_id=f"r{at.timestamp()}-{n}",
                    at=at,
                    user_id=user_id,
                    api_token_id=None,
                    deploy_id="shared",
                    adapter_id=None,
                    prompt_tokens=1,
                    completion_tokens=1,
                    cost_micros=micros,
                )
            ],
        )


def _set_limit(db: Database, user_id: int, micros: int, alert_at: list[float]) -> None:
    with db.session() as s:
        user = s.get(User, user_id)
        assert user is not None
        user.spend_limit_micros = micros
        user.spend_alert_at = alert_at


def _dep(db: Database) -> Deployment:
    with db.session() as s:
        dep = s.get(Deployment, "d1")
        assert dep is not None
        s.expunge(dep)
        return dep


def _events(db: Database, kind: str) -> list[str]:
    with db.session() as s:
        q = select(Event.message).where(Event.deploy_id == "d1", Event.kind == kind)
        return list(s.scalars(q.order_by(Event.id)))


def test_alerts_stop_and_start_again(db_and_user: tuple[Database, int], hook: Hook) -> None:
    db, alice = db_and_user
    clock = {"now": NOW}
    notified: list[int] = []
    enforcer = SpendEnforcer(
        db, lambda: notified.append(1), webhook=hook.url, clock=lambda: clock["now"]
    )
    _set_limit(db, alice, 1_000_000, [0.5, 1.0])

    _spend(db, alice, 400_000, NOW, 1)
    enforcer.run_once()
    assert hook.received == [] and _events(db, "spending_alert") == []

    _spend(db, alice, 200_000, NOW, 2)
    enforcer.run_once()
    enforcer.run_once()  # once per fraction and month
    assert [m["event"] for m in hook.received] == ["alert"]
    assert hook.received[0]["fraction"] == 0.5 and hook.received[0]["spent"] == "0.600000"
    assert len(_events(db, "spending_alert")) == 1
    assert _dep(db).desired_state == "running" and not notified

    # Spending the rest: an alert at 100%, the deployment stopped, saying why.
    _spend(db, alice, 400_000, NOW, 3)
    enforcer.run_once()
    dep = _dep(db)
    assert (dep.desired_state, dep.stopped_by) == ("stopped", "spending_limit")
    assert dep.fail_reason is not None and "1.000000 USD for 2026-11" in dep.fail_reason
    assert len(_events(db, "spending_limit")) == 1
    assert {m["event"] for m in hook.received} == {"alert", "limit_reached"}
    assert notified

    # Raising the limit starts it again.
    _set_limit(db, alice, 2_000_000, [0.5, 1.0])
    enforcer.run_once()
    dep = _dep(db)
    assert (dep.desired_state, dep.stopped_by, dep.fail_reason) == ("running", None, None)
    assert "started again" in _events(db, "spending_limit")[-1]

    # Down to the limit again, then the month turns: nothing spent in December yet.
    _set_limit(db, alice, 1_000_000, [0.5, 1.0])
    enforcer.run_once()
    assert _dep(db).desired_state == "stopped"
    clock["now"] = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    enforcer.run_once()
    assert _dep(db).desired_state == "running"
    with db.session() as s:
        months = sorted(set(s.scalars(select(SpendAlert.month))))
    assert months == ["2026-11"]


def test_an_owners_own_stop_is_left_alone(db_and_user: tuple[Database, int]) -> None:
    db, alice = db_and_user
    enforcer = SpendEnforcer(db, lambda: None, clock=lambda: NOW)
    with db.session() as s:
        dep = s.get(Deployment, "d1")
        assert dep is not None
        dep.desired_state = "stopped"
    _set_limit(db, alice, 1_000_000, [])
    enforcer.run_once()
    assert (_dep(db).desired_state, _dep(db).stopped_by) == ("stopped", None)


def test_two_processes_send_each_alert_once(db_and_user: tuple[Database, int]) -> None:
    db, alice = db_and_user
    _set_limit(db, alice, 1_000_000, [0.5])
    _spend(db, alice, 700_000, NOW - timedelta(minutes=1), 1)
    sent: list[dict[str, Any]] = []

    def enforcer() -> SpendEnforcer:
        return SpendEnforcer(
            db, lambda: None, webhook="x", clock=lambda: NOW, post=lambda _, m: sent.append(m)
        )

    a, b = enforcer(), enforcer()
    threads = [threading.Thread(target=e.run_once) for e in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.session() as s:
        assert len(list(s.scalars(select(SpendAlert)))) == 1
    assert len(sent) == 1
