"""The failed-authentication throttle: per address, refilling, bounded, never in the way of a
token known to be good."""

from __future__ import annotations

import pytest

from modelhost.security.auth_throttle import AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(throttle: AuthThrottle, address: str, times: int) -> None:
    for _ in range(times):
        assert throttle.retry_after(address, "guess") is None
        throttle.failed(address)


def test_a_burst_of_failures_then_429_until_one_refills() -> None:
    clock = Clock()
    t = AuthThrottle(3, 10.0, clock=clock)
    fail(t, "10.0.0.1", 3)
    assert t.retry_after("10.0.0.1", "guess") == pytest.approx(10.0)
    clock.now += 4
    assert t.retry_after("10.0.0.1", "guess") == pytest.approx(6.0)
    clock.now += 6
    # One failure allowed again, and only one.
    fail(t, "10.0.0.1", 1)
    assert t.retry_after("10.0.0.1", "guess") == pytest.approx(10.0)


def test_addresses_are_throttled_separately() -> None:
    t = AuthThrottle(2, 60.0, clock=Clock())
    fail(t, "10.0.0.1", 2)
    assert t.retry_after("10.0.0.1", "guess") is not None
    assert t.retry_after("10.0.0.2", "guess") is None


def test_a_token_known_good_is_never_throttled_until_it_ages_out() -> None:
    clock = Clock()
    t = AuthThrottle(1, 1000.0, known_ttl_s=100.0, clock=clock)
    t.succeeded("good")
    fail(t, "10.0.0.1", 1)
    assert t.retry_after("10.0.0.1", "good") is None
    assert t.retry_after("10.0.0.1", "new-but-valid") is not None
    clock.now += 101
    assert t.retry_after("10.0.0.1", "good") is not None


def test_memory_is_bounded() -> None:
    t = AuthThrottle(1, 60.0, max_clients=3, max_known=2, clock=Clock())
    for i in range(10):
        t.failed(f"10.0.0.{i}")
        t.succeeded(f"token{i}")
    assert len(t._clients) == 3 and len(t._known) == 2
    # The most recent stay.
    assert t.retry_after("10.0.0.9", "guess") is not None
    assert t.retry_after("10.0.0.0", "guess") is None


def test_refilled_addresses_are_forgotten() -> None:
    clock = Clock()
    t = AuthThrottle(2, 1.0, clock=clock)
    fail(t, "10.0.0.1", 1)
    clock.now += 5
    assert t.retry_after("10.0.0.1", "guess") is None
    assert "10.0.0.1" not in t._clients


def test_zero_burst_turns_it_off() -> None:
    t = AuthThrottle(0, 1.0, clock=Clock())
    for _ in range(100):
        t.failed("10.0.0.1")
    assert not t.enabled and t.retry_after("10.0.0.1", "guess") is None
