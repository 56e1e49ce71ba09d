"""modelhost's autoscaling policy: a pure function from load signals to a desired replica count.

`decide(context, state) -> (decision, state)` reads no clock and does no I/O: the loop passes the
time, the deployment's bounds and its load, and keeps the returned state for the next call. That
keeps the policy table-testable and lets bench/autoscale.py drive this exact code in simulation.

The signal is concurrent work: requests in flight plus queued in the gateway (or the engines' own
running + waiting counts, when those are larger, e.g. right after a gateway restart), plus
requests the activator holds for a cold start. Replicas are sized by square-root staffing: an LLM
replica has `max_batch_size` slots and its throughput grows with batch size, so it should run near
full, while Poisson-like arrivals make concurrency fluctuate by about sqrt(mean); the headroom
therefore grows with sqrt(demand) (`headroom_stddevs`) on top of a per-replica target of
`max_batch_size * scale_up_threshold`.

Two windows: the stable window's average sets the steady-state count; the short panic window
detects bursts. When the short window's demand reaches `panic_threshold` times the ready
replicas' target capacity, the policy scales straight to what the burst needs (times
`panic_headroom`, as the burst keeps growing while replicas start) and does not scale down until
the burst has passed for a whole panic window. Scale-down waits `cooldown_s` after the
last scale-up; scale to zero (only with `min_instances == 0`) waits `idle_to_zero_s` without a
request and nothing in flight. Bounds, then capacity/quota (`placeable_max`), apply last.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from modelhost.domain.autoscaling import AutoscalingSettings


@dataclass(frozen=True)
class LoadSignals:
    """One deployment's load right now.

    in_flight / queued: the gateway's counts (forwarded to a replica / waiting for a slot).
    engine_running / engine_waiting: the sums of the replicas' own /stats counts.
    held_cold: requests the activator holds because no replica is ready; not part of `queued`.
    """

    in_flight: int = 0
    queued: int = 0
    engine_running: int = 0
    engine_waiting: int = 0
    held_cold: int = 0

    @property
    def demand(self) -> int:
        # The gateway and the engines see the same requests; take the larger view rather than
        # the sum, so nothing is counted twice and neither view's blind spot hides load.
        gateway = self.in_flight + self.queued
        engines = self.engine_running + self.engine_waiting
        return max(gateway, engines) + self.held_cold


@dataclass(frozen=True)
class ScalingContext:
    now: float
    settings: AutoscalingSettings
    max_batch_size: int
    # Ready plus starting replicas (draining ones are on their way out and don't count).
    current_replicas: int
    ready_replicas: int
    signals: LoadSignals
    # The most replicas of this deployment that free capacity and the owner's quota allow right
    # now, counting the ones it already has; may be below max_instances.
    placeable_max: int
    last_request_at: float | None
    # What sets placeable_max: "capacity" (free GPUs) or "quota" (the owner's gpu_limit).
    placeable_limit: str = "capacity"


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    # Human text with the inputs, for the deployment's events and `deploy info`.
    reason: str
    # "capacity" / "quota" when placeable_max held the count below what the policy wanted.
    capped_by: str | None = None
    panicking: bool = False


@dataclass(frozen=True)
class PolicyState:
    # (time, demand) samples, one per decision, trimmed to the stable window.
    samples: tuple[tuple[float, float], ...] = ()
    last_desired: int | None = None
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    panic_until: float | None = None
    # When this state first saw the deployment: stands in for the last scale-up after a restart
    # of the autoscaler, so a half-empty window can't trigger a scale-down.
    first_seen_at: float | None = None


def window_mean(samples: Iterable[tuple[float, float]], now: float, window_s: float) -> float:
    """Mean of the samples taken in the last `window_s` seconds (0 when there are none)."""
    values = [value for at, value in samples if at > now - window_s]
    return sum(values) / len(values) if values else 0.0


def replicas_for(demand: float, slots_per_replica: float, headroom_stddevs: float) -> int:
    """Replicas that hold `demand` concurrent requests plus sqrt-staffing headroom."""
    if demand <= 0:
        return 0
    needed = demand + headroom_stddevs * math.sqrt(demand)
    # The epsilon keeps an exact fit (e.g. 16.0 / 8.0) from rounding up through float noise.
    return max(1, math.ceil(needed / slots_per_replica - 1e-9))


def apply_bounds(context: ScalingContext, want: int) -> tuple[int, str | None, list[str]]:
    """Clamp a wanted count to min/max, at least 1 while there is work, then to placeable_max.

    Shared by every policy: bounds and capacity are the platform's rules, not the policy's.
    Returns (desired, capped_by, notes for the reason text).
    """
    settings = context.settings
    notes: list[str] = []
    desired = max(want, settings.min_instances)
    if desired > settings.max_instances:
        notes.append(f"wanted {desired}, at max_instances {settings.max_instances}")
        desired = settings.max_instances
    if desired < 1 and context.signals.demand > 0:
        # A held cold request or queued work with no replica must start one now, whatever the
        # windows say: the activator is waiting on this decision.
        desired = 1
    capped_by: str | None = None
    if desired > context.placeable_max:
        notes.append(
            f"wanted {desired}, only {max(context.placeable_max, 0)} placeable "
            f"({context.placeable_limit})"
        )
        desired = max(context.placeable_max, 0)
        capped_by = context.placeable_limit
    return desired, capped_by, notes


def describe_signals(context: ScalingContext, per_replica: float) -> str:
    """The decision's inputs as one phrase, e.g. "3 in flight + 12 queued over 1 replica"."""
    signals = context.signals
    text = f"{signals.in_flight} in flight + {signals.queued} queued"
    if signals.held_cold:
        text += f" + {signals.held_cold} held for a cold start"
    engines = signals.engine_running + signals.engine_waiting
    if engines > signals.in_flight + signals.queued:
        text += f" (engines: {signals.engine_running} running + {signals.engine_waiting} waiting)"
    replicas = context.current_replicas
    text += f" over {replicas} replica{'' if replicas == 1 else 's'}"
    if context.ready_replicas != replicas:
        text += f" ({context.ready_replicas} ready)"
    return text + f" at target {per_replica:g}"


def _plural(count: int) -> str:
    return f"{count} replica{'' if count == 1 else 's'}"


def decide(context: ScalingContext, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
    settings = context.settings
    now = context.now
    demand = float(context.signals.demand)
    # Trim with the current settings, so a live change of the window applies at once.
    samples = tuple(s for s in state.samples if s[0] > now - settings.stable_window_s)
    samples += ((now, demand),)
    stable = window_mean(samples, now, settings.stable_window_s)
    burst = window_mean(samples, now, settings.panic_window_s)

    per_replica = context.max_batch_size * settings.scale_up_threshold
    stable_want = replicas_for(stable, per_replica, settings.headroom_stddevs)
    # A burst is sized with margin for its growth while the new replicas start.
    burst_want = replicas_for(
        burst * settings.panic_headroom, per_replica, settings.headroom_stddevs
    )
    previous = state.last_desired if state.last_desired is not None else context.current_replicas
    first_seen = state.first_seen_at if state.first_seen_at is not None else now
    notes: list[str] = []

    # Panic is judged against what is ready: replicas still starting serve nobody yet.
    ready_capacity = max(context.ready_replicas, 1) * per_replica
    panic_until = state.panic_until
    if burst > 0 and burst >= settings.panic_threshold * ready_capacity:
        panic_until = now + settings.panic_window_s
    panicking = panic_until is not None and now < panic_until

    if panicking:
        want = max(previous, stable_want, burst_want)
        notes.append("panic: burst over the ready capacity, no scale-down")
    else:
        want = stable_want
        idle_for = now - (
            context.last_request_at if context.last_request_at is not None else first_seen
        )
        if want == 0 and previous > 0 and settings.min_instances == 0:
            if demand > 0 or idle_for < settings.idle_to_zero_s:
                want = 1
                notes.append(f"idle {idle_for:.0f}s of {settings.idle_to_zero_s:g}s before zero")
            else:
                notes.append(f"idle {idle_for:.0f}s: scale to zero")
        if want < previous:
            since_up = now - (
                state.last_scale_up_at if state.last_scale_up_at is not None else first_seen
            )
            if since_up < settings.cooldown_s:
                notes.append(
                    f"scale-down to {want} held by cooldown "
                    f"({settings.cooldown_s - since_up:.0f}s left)"
                )
                want = previous

    desired, capped_by, bound_notes = apply_bounds(context, want)
    notes.extend(bound_notes)

    reason = (
        f"{describe_signals(context, per_replica)}"
        f" (avg {stable:.1f} over {settings.stable_window_s:g}s,"
        f" {burst:.1f} over {settings.panic_window_s:g}s) → {_plural(desired)}"
    )
    if notes:
        reason += "; " + "; ".join(notes)

    new_state = PolicyState(
        samples=samples,
        last_desired=desired,
        last_scale_up_at=now if desired > previous else state.last_scale_up_at,
        last_scale_down_at=now if desired < previous else state.last_scale_down_at,
        panic_until=panic_until,
        first_seen_at=first_seen,
    )
    return ScalingDecision(desired, reason, capped_by, panicking), new_state
