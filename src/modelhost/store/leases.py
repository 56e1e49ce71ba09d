"""The leader lease in the database (table `leader_lease`, migration 0009): one row per lease,
taken and renewed by one conditional UPDATE, so the database alone decides who holds it.

Times are the database's own clock (epoch seconds, `clock_timestamp()` on PostgreSQL, `'now'` on
SQLite), never a host's, so hosts whose clocks disagree still agree on who holds the lease. The
rules for what the holder may assume locally are in `domain/leader_lease.py`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

# The control plane's lease: its holder runs the reconciler, the autoscaler and the meters.
CONTROL_PLANE = "control-plane"

_NOW = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def holder_id(start_ticks: int, machine: str) -> str:
    """Unique per process start: host name (for people), pid, the process's start time in
    clock ticks, `machine` (which boot of which host, and which pid namespace: see
    `serve/leadership.py`) and a random part. Another process on the same machine can so tell
    that the holder is gone (`parse_holder`)."""
    host = socket.gethostname()[:32].replace("/", "_")
    return f"{host}/{os.getpid()}/{start_ticks}/{machine}/{secrets.token_hex(4)}"


def parse_holder(holder: str) -> tuple[int, int, str] | None:
    """(pid, start ticks, machine) of a holder id made by `holder_id`, else None."""
    parts = holder.split("/")
    if len(parts) != 5:
        return None
    try:
        return int(parts[1]), int(parts[2]), parts[3]
    except ValueError:
        return None


def _now(s: Session) -> str:
    name = s.get_bind().dialect.name
    try:
        return _NOW[name]
    except KeyError:
        raise RuntimeError(f"the leader lease does not support {name} databases") from None


def _ensure_row(s: Session, name: str) -> None:
    # Migration 0009 inserts the control plane's row; any other lease is made on first use.
    s.execute(
        text(
            "INSERT INTO leader_lease (name, holder, expires_at, acquired_at, term) "
            "VALUES (:name, NULL, 0, NULL, 0) ON CONFLICT (name) DO NOTHING"
        ),
        {"name": name},
    )


def try_acquire(s: Session, holder: str, ttl_s: float, name: str = CONTROL_PLANE) -> bool:
    """Take the lease if it is free, expired or already ours, and (re)set its expiry to the
    database's now + `ttl_s`. True when we hold it after this statement."""
    now = _now(s)
    _ensure_row(s, name)
    result = s.execute(
        text(
            f"UPDATE leader_lease SET holder = :me, expires_at = {now} + :ttl, "
            f"acquired_at = CASE WHEN holder = :me THEN acquired_at ELSE {now} END, "
            "term = CASE WHEN holder = :me THEN term ELSE term + 1 END "
            f"WHERE name = :name AND (holder = :me OR holder IS NULL OR expires_at < {now})"
        ),
        {"me": holder, "ttl": float(ttl_s), "name": name},
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def take_from(s: Session, gone: str, holder: str, ttl_s: float, name: str = CONTROL_PLANE) -> bool:
    """Take the lease from `gone`, a holder known to have died, without waiting for its
    expiry: only if `gone` still holds it (one statement, so two takers cannot both win)."""
    now = _now(s)
    result = s.execute(
        text(
            f"UPDATE leader_lease SET holder = :me, expires_at = {now} + :ttl, "
            f"acquired_at = {now}, term = term + 1 WHERE name = :name AND holder = :gone"
        ),
        {"me": holder, "gone": gone, "ttl": float(ttl_s), "name": name},
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(s: Session, holder: str, name: str = CONTROL_PLANE) -> bool:
    """Give the lease up at a clean shutdown, so another process takes over at its next
    attempt instead of after the TTL. False when it was not ours (any more)."""
    result = s.execute(
        text(
            "UPDATE leader_lease SET holder = NULL, expires_at = 0 "
            "WHERE name = :name AND holder = :me"
        ),
        {"me": holder, "name": name},
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LeaseRow:
    holder: str | None
    # Seconds until it expires by the database's clock (negative: expired).
    expires_in_s: float
    # Bumped each time the lease changes hands.
    term: int


def read(s: Session, name: str = CONTROL_PLANE) -> LeaseRow | None:
    row = s.execute(
        text(f"SELECT holder, expires_at - {_now(s)}, term FROM leader_lease WHERE name = :name"),
        {"name": name},
    ).one_or_none()
    if row is None:
        return None
    return LeaseRow(row[0], float(row[1]), int(row[2]))
