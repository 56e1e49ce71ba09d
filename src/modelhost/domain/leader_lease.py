"""The leader lease's rules, from one process's side (issue 14): when to try for the lease, and
until when this process may act as the leader. Pure: the clock is passed in.

Several `modelhost serve` processes share one database; one at a time holds the lease (a row
the database updates atomically, `store/leases.py`) and runs the control loops. The database
decides who holds it, by its own clock: an attempt sets `expires_at = db_now + ttl` when the
row is free, expired or already ours. Hosts' clocks never meet.

What this process may assume is bounded by its *local monotonic* clock: an attempt that began
at local time `t0` and won was decided by the database after `t0`, so the lease is ours at least
until `t0 + ttl` on any clock that runs at the same rate. The process acts as leader until
`t0 + ttl - margin` only (`margin`: time to stop its loops and for clocks that run slightly
fast), and stops its loops as soon as that passes without a newer win: **fencing** — by the time
another process can win the row, this one has stopped.

An attempt that errs (the database does not answer) changes nothing: a leader keeps its
deadline and fences when it passes; a follower stays a follower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


@dataclass(frozen=True)
class LeaseTiming:
    ttl_s: float = 10.0
    # How often the leader renews, and a follower tries for the lease.
    renew_every_s: float = 2.0
    # The leader stops acting this long before its lease could have expired.
    margin_s: float = 1.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.renew_every_s <= 0 or self.margin_s < 0:
            raise ValueError("lease times must be positive")
        if self.renew_every_s + self.margin_s >= self.ttl_s:
            raise ValueError(
                f"renewing every {self.renew_every_s:g} s with a {self.margin_s:g} s margin "
                f"needs a TTL over {self.renew_every_s + self.margin_s:g} s (got {self.ttl_s:g})"
            )

    @property
    def takeover_bound_s(self) -> float:
        """The longest another process waits after the leader's death: the lease runs out,
        then its next attempt (plus the time an attempt takes)."""
        return self.ttl_s + self.renew_every_s


class Outcome(Enum):
    WON = "won"  # the database gave (or renewed) us the lease
    LOST = "lost"  # another process holds it
    FAILED = "failed"  # no answer: nothing learned


class Change(Enum):
    NONE = "none"
    ELECTED = "elected"  # start the leader's loops (adopting replicas first)
    DEPOSED = "deposed"  # stop them now; leave replicas running


@dataclass(frozen=True)
class LeaseState:
    """This process's view. `leading_until` is a local monotonic time (None: not leading);
    `last_attempt_at` when the last attempt began."""

    leading_until: float | None = None
    last_attempt_at: float | None = None
    # Consecutive attempts that failed (for the log: say it once, say when it recovers).
    failures: int = 0

    def leading(self, now: float) -> bool:
        return self.leading_until is not None and now < self.leading_until


def attempt_due(state: LeaseState, timing: LeaseTiming, now: float) -> bool:
    """Time for the next attempt: every `renew_every_s`, from when the last one began."""
    return state.last_attempt_at is None or now - state.last_attempt_at >= timing.renew_every_s


def began_attempt(state: LeaseState, now: float) -> LeaseState:
    return replace(state, last_attempt_at=now)


def after_attempt(
    state: LeaseState,
    timing: LeaseTiming,
    outcome: Outcome,
    began_at: float,
    now: float,
    acting: bool,
) -> tuple[LeaseState, Change]:
    """Fold in the outcome of an attempt that began at `began_at` and answered at `now`;
    `acting`: whether this process runs the leader's loops now. A win whose deadline has
    already passed (the answer took too long) elects nobody."""
    if outcome is Outcome.WON:
        until = began_at + timing.ttl_s - timing.margin_s
        # A slow answer cannot move an earlier win's deadline back.
        if state.leading_until is not None and state.leading_until > until:
            until = state.leading_until
        new = replace(state, leading_until=until, failures=0)
    elif outcome is Outcome.LOST:
        new = replace(state, leading_until=None, failures=0)
    else:
        new = replace(state, failures=state.failures + 1)
    return new, transition(acting, new.leading(now))


def check(state: LeaseState, acting: bool, now: float) -> tuple[LeaseState, Change]:
    """Between attempts: a process still `acting` as leader whose deadline has passed must
    stop now (fencing), whatever an attempt in flight may still answer."""
    leading = state.leading(now)
    if acting and not leading:
        return replace(state, leading_until=None), Change.DEPOSED
    return state, transition(acting, leading)


def transition(was_leading: bool, leading: bool) -> Change:
    if leading and not was_leading:
        return Change.ELECTED
    if was_leading and not leading:
        return Change.DEPOSED
    return Change.NONE


def next_wake(state: LeaseState, timing: LeaseTiming, now: float) -> float:
    """Seconds until the watcher must look again: the next attempt, or the fencing deadline
    if that comes first."""
    due = (
        0.0
        if state.last_attempt_at is None
        else max(0.0, state.last_attempt_at + timing.renew_every_s - now)
    )
    if state.leading_until is not None:
        due = min(due, max(0.0, state.leading_until - now))
    return due
