"""Table tests of the autoscaling policy (modelhost.autoscaler.policy.decide)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from modelhost.autoscaler.policy import (
    LoadSignals,
    PolicyState,
    ScalingContext,
    ScalingDecision,
    decide,
    replicas_for,
    window_mean,
)
from modelhost.domain.autoscaling import AutoscalingSettings

# max_batch_size 10 at threshold 0.8 makes the per-replica target 8, as in the example.
BATCH = 10
SETTINGS = AutoscalingSettings(
    min_instances=1,
    max_instances=8,
    scale_up_threshold=0.8,
    headroom_stddevs=0.0,
    stable_window_s=60.0,
    panic_window_s=6.0,
    panic_threshold=1.2,
    panic_headroom=1.0,
    cooldown_s=60.0,
    scale_down_margin=0.0,
    idle_to_zero_s=300.0,
)


def ctx(
    now: float,
    demand: int = 0,
    *,
    current: int = 1,
    ready: int | None = None,
    settings: AutoscalingSettings = SETTINGS,
    queued: int = 0,
    held: int = 0,
    placeable: int = 64,
    limit: str = "capacity",
    last_request_at: float | None = 0.0,
    unplaced: int = 0,
) -> ScalingContext:
    return ScalingContext(
        now=now,
        settings=settings,
        max_batch_size=BATCH,
        current_replicas=current,
        ready_replicas=current if ready is None else ready,
        signals=LoadSignals(in_flight=demand, queued=queued, held_cold=held),
        placeable_max=placeable,
        last_request_at=last_request_at,
        placeable_limit=limit,
        unplaced=unplaced,
    )


@dataclass
class Driver:
    """Runs the policy in closed loop: replicas appear (ready) as soon as they are desired, and
    any demand counts as a request arriving at that tick."""

    settings: AutoscalingSettings = SETTINGS
    state: PolicyState = field(default_factory=PolicyState)
    replicas: int = 1
    now: float = 0.0
    last_request_at: float | None = 0.0

    def step(self, demand: int) -> ScalingDecision:
        self.now += 2.0
        if demand:
            self.last_request_at = self.now
        context = ctx(
            self.now,
            demand,
            current=self.replicas,
            settings=self.settings,
            last_request_at=self.last_request_at,
        )
        decision, self.state = decide(context, self.state)
        self.replicas = decision.desired
        return decision

    def run(self, demands: Sequence[int]) -> list[int]:
        return [self.step(d).desired for d in demands]


def test_replicas_for_is_sqrt_staffing() -> None:
    assert replicas_for(0, 8, 1.5) == 0
    assert replicas_for(16, 8, 0.0) == 2  # an exact fit does not round up
    assert replicas_for(16, 8, 1.0) == 3  # 16 + 4 = 20 slots
    assert replicas_for(0.1, 8, 0.0) == 1


def test_window_mean_only_counts_the_window() -> None:
    samples = [(0.0, 100.0), (50.0, 10.0), (58.0, 20.0)]
    assert window_mean(samples, 60.0, 30.0) == 15.0
    assert window_mean([], 60.0, 30.0) == 0.0


def test_reason_names_the_inputs() -> None:
    decision, _ = decide(ctx(2.0, 3, queued=12), PolicyState(last_desired=1))
    assert decision.desired == 2
    assert decision.reason.startswith("3 in flight + 12 queued over 1 replica at target 8")
    assert "→ 2 replicas" in decision.reason


def test_steady_load_sizes_to_target() -> None:
    driver = Driver()
    desired = driver.run([20] * 40)
    assert desired[-1] == 3  # 20 / 8 -> 3
    assert max(desired) == 3


def test_burst_scales_up_at_once_in_panic() -> None:
    driver = Driver()
    driver.run([4] * 30)
    # The latest sample, 60 >= 1.2 * 8, is a burst before the short window's mean (22.7) is:
    # straight to what it needs, 60 / 8 -> 8, while the stable window would still say 1.
    decision = driver.step(60)
    assert decision.panicking
    assert decision.desired == 8
    assert "panic" in decision.reason


def test_rising_load_scales_up_on_the_short_window_before_any_queue() -> None:
    driver = Driver()
    driver.run([6] * 30)
    assert driver.replicas == 1
    # 9 of 8 slots: under the panic threshold (9.6), but the short window needs 2 now; the
    # stable window's average would have waited until the minute was mostly the new load.
    desired = driver.run([9] * 3)
    assert desired[-1] == 2
    assert not driver.step(9).panicking


def test_panic_headroom_sizes_bursts_for_growth() -> None:
    settings = replace(SETTINGS, panic_headroom=1.5)
    state = PolicyState(last_desired=1, samples=((-2.0, 40.0), (-4.0, 40.0)))
    decision, _ = decide(ctx(0.0, 40, settings=settings), state)
    assert decision.panicking
    assert decision.desired == 8  # 40 * 1.5 / 8 -> 7.5 -> 8, where 40 / 8 alone gives 5


@pytest.mark.parametrize("demand_after", [0, 1, 4])
def test_panic_never_scales_down(demand_after: int) -> None:
    settings = replace(SETTINGS, cooldown_s=0.0)
    state = PolicyState(last_desired=2, samples=((0.0, 2.0),))
    # A burst puts it in panic at t=2.
    decision, state = decide(ctx(2.0, 40, current=2, settings=settings), state)
    assert decision.panicking
    high = decision.desired
    # Within the panic window the demand collapses; it must hold, not scale down.
    decision, state = decide(ctx(4.0, demand_after, current=high, settings=settings), state)
    assert decision.panicking
    assert decision.desired == high


@pytest.mark.parametrize(
    ("low", "high", "changes", "final"),
    [
        # Within the 2 replicas' 16 slots: nothing to do.
        (8, 16, 0, 2),
        # Every other sample queues 4 requests (20 > 1.2 * 16): one scale-up, then it stays,
        # because a scale-down never goes to a count the window's peaks would panic at.
        (4, 20, 1, 3),
    ],
)
def test_flapping_signal_does_not_flap_replicas(
    low: int, high: int, changes: int, final: int
) -> None:
    driver = Driver()
    driver.run([12] * 40)  # settle
    desired = driver.run([low, high] * 60)  # alternates every decision around an average of 12
    assert sum(1 for a, b in itertools.pairwise(desired) if a != b) == changes
    assert desired[-1] == final


def test_scale_down_waits_for_cooldown_then_follows_the_stable_window() -> None:
    driver = Driver()
    driver.run([40] * 40)
    assert driver.replicas == 5
    up_at = driver.state.last_scale_up_at
    assert up_at is not None
    desired: list[int] = []
    times: list[float] = []
    for _ in range(60):
        desired.append(driver.step(8).desired)
        times.append(driver.now)
    first_down = next(t for t, d in zip(times, desired, strict=True) if d < 5)
    assert first_down - up_at >= SETTINGS.cooldown_s
    assert desired[-1] == 1
    # Monotone on the way down, one replica per decision: no scale-up while load is flat.
    assert all(0 <= a - b <= 1 for a, b in itertools.pairwise(desired))


def test_scale_down_goes_in_steps_of_a_tenth() -> None:
    settings = replace(SETTINGS, max_instances=64, cooldown_s=0.0)
    state = PolicyState(last_desired=40, first_seen_at=-1000.0)
    decision, state = decide(ctx(2.0, 8, current=40, settings=settings), state)
    assert decision.desired == 36  # wants 1; a tenth of 40 per decision
    decision, _ = decide(ctx(4.0, 8, current=36, settings=settings), state)
    assert decision.desired == 33


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        # 23 concurrent requests fit 3 replicas of 8 slots...
        (0.0, 3),
        # ...but 3 replicas run bigger, slower batches than 4, so the concurrency would rise
        # past 24: the margin keeps the 4th replica.
        (0.1, 4),
    ],
)
def test_scale_down_margin_is_hysteresis(margin: float, expected: int) -> None:
    settings = replace(SETTINGS, cooldown_s=0.0, scale_down_margin=margin)
    state = PolicyState(last_desired=4, first_seen_at=-1000.0, samples=((0.0, 23.0),))
    decision, _ = decide(ctx(2.0, 23, current=4, settings=settings), state)
    assert decision.desired == expected


def test_cooldown_counts_from_the_latest_scale_up() -> None:
    state = PolicyState(last_desired=4, last_scale_up_at=100.0, first_seen_at=0.0)
    decision, _ = decide(ctx(130.0, 0, current=4), state)
    assert decision.desired == 4
    assert "cooldown" in decision.reason
    decision, _ = decide(ctx(161.0, 0, current=4), state)
    assert decision.desired == 3


def test_fresh_state_does_not_scale_down_on_a_half_empty_window() -> None:
    # After an autoscaler restart it has one sample; it must not drop 4 busy replicas to 1.
    decision, state = decide(ctx(1000.0, 2, current=4), PolicyState())
    assert decision.desired == 4
    decision, _ = decide(ctx(1061.0, 2, current=4), state)
    assert decision.desired == 3


def test_idle_goes_to_zero_only_with_min_zero_after_idle_period() -> None:
    settings = replace(SETTINGS, min_instances=0, idle_to_zero_s=120.0)
    driver = Driver(settings=settings)
    driver.run([5] * 40)  # last request at t=80
    last = driver.now
    desired = driver.run([0] * 100)
    times = [last + 2.0 * (i + 1) for i in range(100)]
    zero_at = next(t for t, d in zip(times, desired, strict=True) if d == 0)
    assert zero_at - last >= 120.0
    assert zero_at - last <= 124.0
    assert desired[-1] == 0

    kept = Driver(settings=replace(settings, min_instances=1))
    kept.run([5] * 40)
    assert kept.run([0] * 100)[-1] == 1


def test_never_used_deployment_with_min_zero_goes_to_standby() -> None:
    settings = replace(SETTINGS, min_instances=0, idle_to_zero_s=60.0)
    state = PolicyState()
    desired = []
    for i in range(40):
        decision, state = decide(
            ctx(2.0 * i, 0, current=1, settings=settings, last_request_at=None), state
        )
        desired.append(decision.desired)
    assert desired[0] == 1
    assert desired[-1] == 0


ZERO = replace(SETTINGS, min_instances=0, idle_to_zero_s=60.0, cooldown_s=0.0)
LONG_AGO = PolicyState(first_seen_at=-10_000.0)


@pytest.mark.parametrize(
    ("case", "settings", "state", "current", "ready", "demand", "last_request", "expected"),
    [
        # The first replica of a min-0 deployment is still loading its weights, no request
        # ever came, the idle period is long over: it must not be cancelled.
        ("first replica loading", ZERO, LONG_AGO, 1, 0, 0, None, 1),
        ("first replica loading, old request", ZERO, LONG_AGO, 1, 0, 0, -5000.0, 1),
        # Two of five still starting after a burst that has gone: no scale-down at all,
        # since the planner retires starting replicas first.
        ("burst replicas starting", SETTINGS, replace(LONG_AGO, last_desired=5), 5, 3, 1, 0.0, 5),
        (
            "all ready: scale-down proceeds",
            SETTINGS,
            replace(LONG_AGO, last_desired=5),
            5,
            5,
            1,
            0.0,
            4,
        ),
        # Ready since this decision (the state saw none ready before): idle counts from now.
        ("just became ready", ZERO, replace(LONG_AGO, last_desired=1), 1, 1, 0, None, 1),
        (
            "ready and idle long enough",
            ZERO,
            replace(LONG_AGO, last_desired=1, ready_since=-100.0),
            1,
            1,
            0,
            None,
            0,
        ),
        (
            "request after ready counts",
            ZERO,
            replace(LONG_AGO, last_desired=1, ready_since=-100.0),
            1,
            1,
            0,
            -30.0,
            1,
        ),
        # Lowering max_instances is the owner's explicit limit: it applies even to starting ones.
        (
            "max lowered below starting",
            replace(SETTINGS, max_instances=2),
            replace(LONG_AGO, last_desired=5),
            5,
            3,
            1,
            0.0,
            2,
        ),
    ],
)
def test_scale_down_never_cancels_a_replica_still_starting(
    case: str,
    settings: AutoscalingSettings,
    state: PolicyState,
    current: int,
    ready: int,
    demand: int,
    last_request: float | None,
    expected: int,
) -> None:
    context = ctx(
        0.0, demand, current=current, ready=ready, settings=settings, last_request_at=last_request
    )
    decision, _ = decide(context, state)
    assert decision.desired == expected, case
    if current > ready and expected == current:
        assert "still starting" in decision.reason


def test_slow_first_replica_gets_its_whole_idle_period_after_it_is_ready() -> None:
    # min 0, idle_to_zero 60 s, and a first replica that needs 200 s to load its weights.
    state = PolicyState()
    desired: dict[float, int] = {}
    for i in range(200):
        now = 2.0 * i
        ready = 1 if now >= 200.0 else 0
        decision, state = decide(
            ctx(now, 0, current=1, ready=ready, settings=ZERO, last_request_at=None), state
        )
        desired[now] = decision.desired
    assert all(d == 1 for t, d in desired.items() if t < 260.0)
    assert desired[262.0] == 0


def test_panic_while_replicas_start_then_scale_down_once_ready() -> None:
    settings = replace(SETTINGS, cooldown_s=0.0, stable_window_s=20.0)
    state = PolicyState(last_desired=1, first_seen_at=-1000.0)
    decision, state = decide(ctx(0.0, 40, current=1, settings=settings), state)
    assert decision.panicking and decision.desired == 5
    # The burst vanishes while the 4 new replicas start: held, panic or not.
    now = 2.0
    while now < 40.0:
        decision, state = decide(ctx(now, 0, current=5, ready=1, settings=settings), state)
        assert decision.desired == 5
        now += 2.0
    # Ready: the stable window (no load for 20 s now) releases them, one step at a time.
    decision, state = decide(ctx(now, 0, current=5, ready=5, settings=settings), state)
    assert decision.desired == 4


def test_in_flight_work_blocks_scale_to_zero() -> None:
    settings = replace(SETTINGS, min_instances=0, idle_to_zero_s=10.0, cooldown_s=0.0)
    state = PolicyState(last_desired=1, first_seen_at=-1000.0)
    # A 5-minute stream: no new request for 300 s, but one is still in flight.
    decision, _ = decide(ctx(300.0, 1, settings=settings, last_request_at=0.0), state)
    assert decision.desired == 1


@pytest.mark.parametrize(
    ("held", "queued", "expected"),
    [(1, 0, 1), (0, 3, 1), (50, 0, 7)],
)
def test_cold_request_with_zero_replicas_starts_at_once(
    held: int, queued: int, expected: int
) -> None:
    settings = replace(SETTINGS, min_instances=0)
    # Scaled to zero a moment ago (cooldown active): held work still starts replicas now.
    state = PolicyState(last_desired=0, last_scale_up_at=0.0, first_seen_at=0.0)
    decision, _ = decide(
        ctx(10.0, 0, current=0, settings=settings, held=held, queued=queued), state
    )
    assert decision.desired == expected


def test_bounds_clamp_and_say_so() -> None:
    settings = replace(SETTINGS, min_instances=2, max_instances=3)
    decision, _ = decide(ctx(2.0, 0, current=2, settings=settings), PolicyState())
    assert decision.desired == 2
    decision, _ = decide(ctx(2.0, 200, current=2, settings=settings), PolicyState())
    assert decision.desired == 3
    assert "max_instances 3" in decision.reason


IN_COOLDOWN = PolicyState(first_seen_at=0.0)  # decisions at t=2: 58 s of cooldown left


@pytest.mark.parametrize(
    ("case", "floor", "state", "current", "ready", "expected", "held"),
    [
        # At the floor there is nothing to scale down to, so nothing is "held".
        ("min 1 at floor, cooldown", 1, IN_COOLDOWN, 1, 1, 1, None),
        ("min 2 at floor, cooldown", 2, IN_COOLDOWN, 2, 2, 2, None),
        ("min 2 at floor, after cooldown", 2, LONG_AGO, 2, 2, 2, None),
        ("min 2 at floor, one starting", 2, LONG_AGO, 2, 1, 2, None),
        # Above the floor, a held scale-down names the floor, never a count below it.
        ("min 2 above floor, cooldown", 2, IN_COOLDOWN, 4, 4, 4, "scale-down to 2 held by cool"),
        ("min 2 above floor, starting", 2, LONG_AGO, 4, 3, 4, "scale-down to 2 held: 1 replica"),
        ("min 2 above floor, after cooldown", 2, LONG_AGO, 4, 4, 3, None),
        ("min 2 one step from floor", 2, LONG_AGO, 3, 3, 2, None),
        # With min 0 a scale-down to 0 is a real target.
        ("min 0, cooldown", 0, IN_COOLDOWN, 1, 1, 1, "scale-down to 0 held by cooldown"),
    ],
)
def test_idle_scale_down_reason_respects_min_instances(
    case: str,
    floor: int,
    state: PolicyState,
    current: int,
    ready: int,
    expected: int,
    held: str | None,
) -> None:
    settings = replace(SETTINGS, min_instances=floor)
    context = ctx(2.0, 0, current=current, ready=ready, settings=settings)
    decision, _ = decide(context, replace(state, last_desired=current))
    assert decision.desired == expected, case
    targets = [int(n) for n in re.findall(r"scale-down to (\d+)", decision.reason)]
    assert all(n >= floor for n in targets), (case, decision.reason)
    if held is None:
        assert "held" not in decision.reason, (case, decision.reason)
    else:
        assert held in decision.reason, (case, decision.reason)


@pytest.mark.parametrize("limit", ["capacity", "quota"])
def test_placeable_max_caps_and_reports(limit: str) -> None:
    decision, _ = decide(ctx(2.0, 200, current=1, placeable=3, limit=limit), PolicyState())
    assert decision.desired == 3
    assert decision.capped_by == limit
    assert f"only 3 placeable ({limit})" in decision.reason


def test_placeable_zero_with_held_request_stays_zero_and_says_why() -> None:
    settings = replace(SETTINGS, min_instances=0)
    decision, _ = decide(
        ctx(2.0, 0, current=0, held=5, placeable=0, settings=settings), PolicyState()
    )
    assert decision.desired == 0
    assert decision.capped_by == "capacity"


def test_uncapped_decision_has_no_capped_by() -> None:
    decision, _ = decide(ctx(2.0, 10, current=1, placeable=3), PolicyState())
    assert decision.capped_by is None


def test_live_setting_changes_apply_at_next_decision() -> None:
    driver = Driver()
    driver.run([20] * 40)
    assert driver.replicas == 3
    # Raise the target: fewer replicas for the same load (after cooldown, which has passed).
    driver.settings = replace(SETTINGS, scale_up_threshold=1.0)
    assert driver.step(20).desired == 2
    # Lower max below the current count: applies at once, cooldown or not.
    driver.settings = replace(driver.settings, max_instances=1)
    assert driver.step(20).desired == 1
    # Raise min: scales up at once.
    driver.settings = replace(driver.settings, min_instances=4, max_instances=6)
    assert driver.step(20).desired == 4
    # Shrink the stable window: the state's older samples are dropped, nothing breaks.
    driver.settings = replace(driver.settings, stable_window_s=10.0, panic_window_s=2.0)
    assert driver.step(20).desired == 4
    assert all(t > driver.now - 10.0 for t, _ in driver.state.samples)


def test_engine_counts_count_when_larger_than_the_gateway() -> None:
    context = replace(
        ctx(2.0, 0), signals=LoadSignals(in_flight=2, engine_running=20, engine_waiting=10)
    )
    decision, _ = decide(context, PolicyState())
    assert decision.desired == 4  # 30 / 8
    assert "engines: 20 running + 10 waiting" in decision.reason


def test_decide_is_pure() -> None:
    state = PolicyState(samples=((0.0, 5.0),), last_desired=1)
    context = ctx(2.0, 30)
    first = decide(context, state)
    second = decide(context, state)
    assert first == second
    assert state == PolicyState(samples=((0.0, 5.0),), last_desired=1)


# --- Scale to zero is an idleness rule (docs/autoscaling.md, "Scale to zero") -----------------


@pytest.mark.parametrize(
    ("idle_to_zero_s", "stable_window_s", "cooldown_s", "load"),
    [
        # The probe's case: idle_to_zero_s 5 went to zero only after the 20 s stable window.
        (5.0, 20.0, 1.0, 5),
        (5.0, 60.0, 1.0, 5),
        # Several replicas with no request for the idle period go at once, not a step a tick.
        (5.0, 60.0, 1.0, 40),
        (30.0, 20.0, 1.0, 5),
        (120.0, 60.0, 60.0, 5),
    ],
)
def test_scale_to_zero_after_idle_to_zero_s_whatever_the_stable_window(
    idle_to_zero_s: float, stable_window_s: float, cooldown_s: float, load: int
) -> None:
    settings = replace(
        SETTINGS,
        min_instances=0,
        idle_to_zero_s=idle_to_zero_s,
        stable_window_s=stable_window_s,
        panic_window_s=min(6.0, stable_window_s),
        cooldown_s=cooldown_s,
    )
    driver = Driver(settings=settings)
    driver.run([load] * 60)  # the last request arrives at t=120
    last = driver.now
    before_zero = driver.replicas
    desired = driver.run([0] * 100)
    times = [last + 2.0 * (i + 1) for i in range(100)]
    zero_at = next(t for t, d in zip(times, desired, strict=True) if d == 0)
    # The first decision (every 2 s) at or after idle_to_zero_s of idleness.
    assert idle_to_zero_s <= zero_at - last < idle_to_zero_s + 2.0
    assert min(d for t, d in zip(times, desired, strict=True) if t < zero_at) >= 1
    if load == 40:
        assert before_zero > 1 and desired[times.index(zero_at) - 1] == before_zero


# --- Replicas the policy did not order, and replicas that could not be placed -----------------


@pytest.mark.parametrize(
    ("case", "state", "current", "ready", "unplaced", "held", "expected", "note"),
    [
        # Issue 9 probe: the activator asked for a replica at zero (the policy had decided 0
        # before), the callers left; the start must not be cancelled while it loads.
        (
            "activator's replica still starting",
            replace(LONG_AGO, last_desired=0),
            1,
            0,
            0,
            0,
            1,
            "scale-down to 0 held: 1 replica still starting",
        ),
        # ...and once ready it gets its whole idle period, as any first replica.
        (
            "activator's replica just ready",
            replace(LONG_AGO, last_desired=0),
            1,
            1,
            0,
            0,
            1,
            "idle 0s of 60s before zero",
        ),
        # A replica the orchestrator could not place is not starting: nobody waits for it, so
        # the deployment goes back to standby at once (its requests are refused, not held).
        (
            "wanted, never placed, nobody waiting",
            replace(LONG_AGO, last_desired=1),
            1,
            0,
            1,
            0,
            0,
            "1 replica that could not be placed no longer wanted",
        ),
        ("activator's replica never placed", replace(LONG_AGO, last_desired=0), 1, 0, 1, 0, 0, ""),
        # A request still held for it keeps it wanted.
        ("never placed, a request held", replace(LONG_AGO, last_desired=1), 1, 0, 1, 1, 1, ""),
    ],
)
def test_replicas_the_policy_did_not_order(
    case: str,
    state: PolicyState,
    current: int,
    ready: int,
    unplaced: int,
    held: int,
    expected: int,
    note: str,
) -> None:
    context = ctx(
        0.0,
        0,
        current=current,
        ready=ready,
        settings=ZERO,
        held=held,
        last_request_at=None,
        unplaced=unplaced,
    )
    decision, _ = decide(context, state)
    assert decision.desired == expected, (case, decision.reason)
    assert note in decision.reason, (case, decision.reason)


def test_unplaced_replicas_go_at_once_within_cooldown_and_down_to_the_floor_only() -> None:
    # A burst wanted 4 replicas, 2 could not be placed; the burst is over: the 2 unplaced go
    # now (no cooldown, no steps), the 2 running ones stay for the normal rules.
    state = PolicyState(last_desired=4, last_scale_up_at=0.0, first_seen_at=0.0)
    decision, _ = decide(ctx(2.0, 0, current=4, ready=2, unplaced=2), state)
    assert decision.desired == 2
    # min_instances wants them whatever the capacity: they stay wanted (pending).
    floor = replace(SETTINGS, min_instances=2)
    decision, _ = decide(
        ctx(2.0, 0, current=2, ready=0, unplaced=2, settings=floor),
        replace(LONG_AGO, last_desired=2),
    )
    assert decision.desired == 2
