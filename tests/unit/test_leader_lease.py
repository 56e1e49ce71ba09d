"""The leader lease's rules (domain/leader_lease.py), with the clock passed in."""

from __future__ import annotations

import pytest

from modelhost.domain.leader_lease import (
    Change,
    LeaseState,
    LeaseTiming,
    Outcome,
    after_attempt,
    attempt_due,
    began_attempt,
    check,
    next_wake,
)

T = LeaseTiming(ttl_s=10.0, renew_every_s=2.0, margin_s=1.0)
L = LeaseState


@pytest.mark.parametrize(
    ("state", "acting", "outcome", "began", "now", "until", "change"),
    [
        # A follower wins: leads until began + ttl - margin, by its own clock.
        (LeaseState(), False, Outcome.WON, 100.0, 100.2, 109.0, Change.ELECTED),
        # A leader renews: the deadline moves on from when the attempt began.
        (L(leading_until=109.0), True, Outcome.WON, 102.0, 102.5, 111.0, Change.NONE),
        # A slow answer to an older attempt never moves the deadline back.
        (L(leading_until=111.0), True, Outcome.WON, 101.0, 103.0, 111.0, Change.NONE),
        # Another process holds it: a follower stays one.
        (LeaseState(), False, Outcome.LOST, 100.0, 100.1, None, Change.NONE),
        # A leader told someone else holds it stops at once.
        (L(leading_until=109.0), True, Outcome.LOST, 104.0, 104.1, None, Change.DEPOSED),
        # No answer: a leader keeps its deadline...
        (L(leading_until=109.0), True, Outcome.FAILED, 104.0, 105.0, 109.0, Change.NONE),
        # ... until it passes.
        (L(leading_until=109.0), True, Outcome.FAILED, 106.0, 109.0, 109.0, Change.DEPOSED),
        # A follower learns nothing from a failure.
        (LeaseState(), False, Outcome.FAILED, 100.0, 101.0, None, Change.NONE),
        # A win answered after its own deadline (the database took 9.5 s) elects nobody.
        (LeaseState(), False, Outcome.WON, 100.0, 109.5, 109.0, Change.NONE),
    ],
)
def test_after_attempt(
    state: LeaseState,
    acting: bool,
    outcome: Outcome,
    began: float,
    now: float,
    until: float | None,
    change: Change,
) -> None:
    new, got = after_attempt(state, T, outcome, began, now, acting)
    assert new.leading_until == until
    assert got is change


@pytest.mark.parametrize(
    ("until", "acting", "now", "change", "leading_after"),
    [
        (109.0, True, 108.9, Change.NONE, True),
        # Fencing: the deadline passed with no newer win (the renewal hangs): stop now.
        (109.0, True, 109.0, Change.DEPOSED, False),
        (None, False, 50.0, Change.NONE, False),
        # Not acting yet with a valid lease (elected by an attempt just folded in).
        (109.0, False, 105.0, Change.ELECTED, True),
    ],
)
def test_check_fences_a_leader_past_its_deadline(
    until: float | None, acting: bool, now: float, change: Change, leading_after: bool
) -> None:
    new, got = check(LeaseState(leading_until=until), acting, now)
    assert got is change
    assert new.leading(now) is leading_after


def test_failures_are_counted_and_reset() -> None:
    s = LeaseState()
    for i in range(3):
        s, _ = after_attempt(s, T, Outcome.FAILED, float(i), float(i), False)
    assert s.failures == 3
    s, _ = after_attempt(s, T, Outcome.LOST, 4.0, 4.0, False)
    assert s.failures == 0


def test_attempts_are_due_every_renew_interval() -> None:
    s = LeaseState()
    assert attempt_due(s, T, 0.0)
    s = began_attempt(s, 10.0)
    assert not attempt_due(s, T, 11.9)
    assert attempt_due(s, T, 12.0)


def test_next_wake_is_the_next_attempt_or_the_deadline() -> None:
    assert next_wake(LeaseState(), T, 5.0) == 0.0
    s = LeaseState(last_attempt_at=10.0)
    assert next_wake(s, T, 10.5) == pytest.approx(1.5)
    # A deadline before the next attempt wakes the watcher for it.
    s = LeaseState(last_attempt_at=10.0, leading_until=11.0)
    assert next_wake(s, T, 10.5) == pytest.approx(0.5)


def test_a_dead_leader_is_replaced_within_the_bound() -> None:
    """A leader renews at 0, then dies. The follower tries every 2 s, offset by 1.9 s; the
    database's lease runs out 10 s after the last renewal, so some attempt wins by 12 s."""
    follower = LeaseState()
    expires_at = 0.0 + T.ttl_s  # the database's view of the dead leader's last renewal
    t = 1.9
    while True:
        outcome = Outcome.WON if t > expires_at else Outcome.LOST
        follower = began_attempt(follower, t)
        follower, change = after_attempt(follower, T, outcome, t, t + 0.05, False)
        if change is Change.ELECTED:
            break
        t += T.renew_every_s
    assert t <= T.takeover_bound_s
    assert T.takeover_bound_s < 15.0


def test_the_deposed_leader_stops_before_another_can_win() -> None:
    """The leader's last successful renewal began at local time 0 and reached the database at
    db time D >= 0 (in the same seconds); the row expires at D + ttl. The leader fences at
    0 + ttl - margin, a margin before anyone else could win."""
    leader, _ = after_attempt(LeaseState(), T, Outcome.WON, 0.0, 0.3, False)
    assert leader.leading_until is not None
    earliest_other_win = 0.0 + T.ttl_s
    assert leader.leading_until <= earliest_other_win - T.margin_s
    _, change = check(leader, True, leader.leading_until)
    assert change is Change.DEPOSED


@pytest.mark.parametrize(
    ("ttl", "renew", "margin"), [(3.0, 2.0, 1.0), (0.0, 1.0, 0.1), (10.0, -1.0, 1.0)]
)
def test_timing_that_could_not_renew_in_time_is_refused(
    ttl: float, renew: float, margin: float
) -> None:
    with pytest.raises(ValueError):
        LeaseTiming(ttl, renew, margin)
