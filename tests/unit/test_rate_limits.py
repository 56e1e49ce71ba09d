"""The sliding-window rate limiter (in memory), on an injected clock."""

from __future__ import annotations

import pytest

from modelhost.domain.rate_limits import (
    WINDOW_S,
    Check,
    RateLimits,
    WindowCounter,
    validate_limits,
)


def _admitted(counter: WindowCounter, checks: list[Check], n: int, now: float) -> int:
    return sum(counter.admit(checks, now).admitted for _ in range(n))


@pytest.mark.parametrize("rpm", [1, 5, 60])
def test_a_burst_of_three_times_the_limit_admits_exactly_the_limit(rpm: int) -> None:
    counter = WindowCounter()
    checks = [Check("u:1", RateLimits(rpm=rpm))]
    assert _admitted(counter, checks, 3 * rpm, now=100.0) == rpm


def test_the_window_slides_one_request_at_a_time() -> None:
    counter = WindowCounter()
    checks = [Check("u:1", RateLimits(rpm=2))]
    assert counter.admit(checks, 0.0).admitted
    assert counter.admit(checks, 10.0).admitted
    refused = counter.admit(checks, 20.0)
    assert not refused.admitted
    # The first request leaves the window at 60 s: that is when to retry.
    assert refused.retry_after_s == pytest.approx(WINDOW_S - 20.0)
    assert not counter.admit(checks, 59.9).admitted
    assert counter.admit(checks, 60.0).admitted
    assert not counter.admit(checks, 60.1).admitted
    assert counter.admit(checks, 70.0).admitted


def test_a_refused_request_is_counted_on_no_key() -> None:
    counter = WindowCounter()
    user = Check("u:1", RateLimits(rpm=10))
    deployment = Check("d:x:u:1", RateLimits(rpm=1))
    assert counter.admit([user, deployment], 0.0).admitted
    for _ in range(5):
        assert not counter.admit([user, deployment], 1.0).admitted
    # Only the admitted request counts on the user's key: 9 more fit there alone.
    assert _admitted(counter, [user], 20, now=2.0) == 9


def test_one_key_does_not_touch_another() -> None:
    counter = WindowCounter()
    a = [Check("u:1", RateLimits(rpm=3))]
    b = [Check("u:2", RateLimits(rpm=3))]
    assert _admitted(counter, a, 30, now=0.0) == 3
    assert _admitted(counter, b, 3, now=0.0) == 3


def test_tokens_per_minute_admit_while_under_and_wait_for_the_window() -> None:
    counter = WindowCounter()
    checks = [Check("u:1", RateLimits(tpm=100))]
    assert counter.admit(checks, 0.0).admitted
    counter.add_tokens(checks, 60, 1.0)
    assert counter.admit(checks, 2.0).admitted  # 60 < 100
    counter.add_tokens(checks, 50, 3.0)
    refused = counter.admit(checks, 4.0)
    assert not refused.admitted
    # 110 used; once the 60 of t=1 leave (t=61) the rest is under the limit.
    assert refused.retry_after_s == pytest.approx(61.0 - 4.0)
    assert counter.admit(checks, 61.0).admitted


def test_headers_report_the_tightest_limit() -> None:
    counter = WindowCounter()
    checks = [Check("u:1", RateLimits(rpm=10, tpm=1000)), Check("t:x", RateLimits(rpm=3))]
    decision = counter.admit(checks, 0.0)
    assert decision.headers(checks) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
    }
    assert WindowCounter().admit([], 0.0).headers([]) == {}


def test_idle_keys_are_forgotten() -> None:
    counter = WindowCounter()
    for i in range(50):
        counter.admit([Check(f"u:{i}", RateLimits(rpm=1))], 0.0)
    counter.admit([Check("u:0", RateLimits(rpm=1))], 2 * WINDOW_S)
    assert len(counter._windows) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ({}, None),
        ({"rpm": None, "tpm": None}, None),
        ({"rpm": 5}, RateLimits(rpm=5)),
        ({"rpm": 5, "tpm": 1000}, RateLimits(5, 1000)),
    ],
)
def test_valid_limits(raw: object, expected: RateLimits | None) -> None:
    assert validate_limits(raw) == expected


@pytest.mark.parametrize(
    "raw", [[], {"rpm": 0}, {"rpm": -1}, {"rpm": 1.5}, {"rpm": True}, {"rps": 1}, "60"]
)
def test_invalid_limits(raw: object) -> None:
    with pytest.raises(ValueError):
        validate_limits(raw)


def test_limits_round_trip_through_json() -> None:
    limits = RateLimits(rpm=7, tpm=None)
    assert RateLimits.from_json(limits.to_json()) == limits
    assert RateLimits.from_json(None) is None
