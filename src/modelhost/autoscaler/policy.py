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

Asymmetric windows: scale up fast, scale down only when the longer window supports it. The short
(panic) window's average sizes scale-ups at once. A scale-down needs the stable window's average,
raised by `scale_down_margin` (fewer replicas run bigger, slower batches, which raises the
concurrency they see), to fit fewer replicas; it then goes one step (a tenth of the replicas, at
least one) per decision, never within `cooldown_s` of the last scale-up, and never while a replica
is still starting (the planner would cancel that start first), whoever asked for it: the
activator, or a higher `min_instances`. When the short window's demand, or the latest sample,
reaches `panic_threshold` times the ready replicas' target capacity, the policy scales straight
to what the burst needs times `panic_headroom` (the burst keeps arriving and queueing while
replicas start) and does not scale down until the burst has passed for a whole panic window.
Scale to zero (only with `min_instances == 0`) is an idleness rule, not a window average: it
happens once `idle_to_zero_s` has passed without a request and with nothing in flight, counted
from the later of the last request and the moment the deployment had a ready replica. Replicas
that were wanted but could not be placed (`unplaced`) are dropped at once when the load no
longer needs them. Bounds, then the owner's quota (`placeable_max`), apply last.
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
    # Ready plus starting replicas, plus wanted ones not started yet (draining ones are on their
    # way out and don't count).
    current_replicas: int
    ready_replicas: int
    signals: LoadSignals
    # The most replicas of this deployment the owner's quota allows right now (the server),
    # or free capacity (the simulation), counting the ones it already has.
    placeable_max: int
    last_request_at: float | None
    # What sets placeable_max: "capacity" (free GPUs) or "quota" (the owner's gpu_limit).
    placeable_limit: str = "capacity"
    # Of current_replicas, those the orchestrator could not place (no free device, or the
    # owner's CPU share): pending, not starting, so a scale-down may drop them at once.
    unplaced: int = 0


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
    # Since when the deployment has had a ready replica (None while it has none).
    ready_since: float | None = None


def window(
    samples: Iterable[tuple[float, float]], now: float, window_s: float
) -> list[tuple[float, float]]:
    """The samples taken in the last `window_s` seconds."""
    return [(at, value) for at, value in samples if at > now - window_s]


def window_mean(samples: Iterable[tuple[float, float]], now: float, window_s: float) -> float:
    """Mean of the samples taken in the last `window_s` seconds (0 when there are none)."""
    values = [value for _, value in window(samples, now, window_s)]
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


def _starting(context: ScalingContext) -> int:
    return max(context.current_replicas - context.ready_replicas - _unplaced(context), 0)


def _unplaced(context: ScalingContext) -> int:
    return min(max(context.unplaced, 0), max(context.current_replicas - context.ready_replicas, 0))


def decide(context: ScalingContext, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
    settings = context.settings
    now = context.now
    demand = float(context.signals.demand)
    # Trim with the current settings, so a live change of a window applies at once.
    keep_s = max(settings.stable_window_s, settings.panic_window_s)
    samples = tuple(s for s in state.samples if s[0] > now - keep_s)
    samples += ((now, demand),)
    stable = window_mean(samples, now, settings.stable_window_s)
    short = window_mean(samples, now, settings.panic_window_s)
    # A step in load shows in the latest sample a few seconds before the short window's mean.
    burst = max(short, demand)

    per_replica = context.max_batch_size * settings.scale_up_threshold
    up_want = replicas_for(short, per_replica, settings.headroom_stddevs)
    # A scale-down must leave room for the concurrency it causes itself (bigger batches are
    # slower per request), hence the margin: hysteresis between scaling up and down.
    down_want = replicas_for(
        stable * (1.0 + settings.scale_down_margin), per_replica, settings.headroom_stddevs
    )
    # Nor to a count whose capacity the window's peaks would put in panic at once: a signal
    # that keeps spiking over it would otherwise flap between scale-down and panic.
    peak = max(value for _, value in window(samples, now, settings.stable_window_s))
    if peak > 0:
        down_want = max(down_want, math.floor(peak / (settings.panic_threshold * per_replica)) + 1)
    # Never below the floor: a deployment at min_instances has no scale-down to hold or make.
    down_want = max(down_want, settings.min_instances)
    previous = state.last_desired if state.last_desired is not None else context.current_replicas
    # Replicas this policy did not order (the activator's first one after zero, a raised
    # min_instances) are the count to scale from: judged by the same rules as the policy's own,
    # e.g. one still starting is never cancelled, one just ready gets its whole idle period.
    unplaced = _unplaced(context)
    previous = max(previous, context.current_replicas - unplaced)
    first_seen = state.first_seen_at if state.first_seen_at is not None else now
    # When the deployment last went from no ready replica to one: idle time for scale to zero
    # counts from here at the earliest, so a replica is never dropped before it could serve.
    # After an autoscaler restart that finds ready replicas, the restart stands in for it.
    ready_since = state.ready_since if context.ready_replicas > 0 else None
    if context.ready_replicas > 0 and ready_since is None:
        ready_since = now
    # Scale to zero is decided on idleness alone: no request for idle_to_zero_s and nothing in
    # flight now, whatever the stable window still averages (a user setting idle_to_zero_s
    # means that idle time, not that time or the stable window, whichever is longer).
    anchors = [at for at in (context.last_request_at, ready_since) if at is not None]
    idle_for = now - (max(anchors) if anchors else first_seen)
    idle = settings.min_instances == 0 and demand <= 0 and idle_for >= settings.idle_to_zero_s
    notes: list[str] = []

    # Panic is judged against what is ready: replicas still starting serve nobody yet.
    ready_capacity = max(context.ready_replicas, 1) * per_replica
    panic_until = state.panic_until
    if burst > 0 and burst >= settings.panic_threshold * ready_capacity:
        panic_until = now + settings.panic_window_s
    panicking = panic_until is not None and now < panic_until

    if panicking:
        # Sized with margin for the burst's growth and its backlog while the replicas start.
        burst_want = replicas_for(
            burst * settings.panic_headroom, per_replica, settings.headroom_stddevs
        )
        want = max(previous, up_want, burst_want)
        notes.append("panic: burst over the ready capacity, no scale-down")
    elif up_want > previous:
        want = up_want
    elif previous > 0 and (down_want < previous or idle):
        target = 0 if idle else down_want
        if unplaced:
            # Never placed: they serve nobody and hold no device, so no cooldown, steps or idle
            # period protects them; a deployment that could not get its first replica goes back
            # to standby as soon as no request waits for one.
            want = max(target, previous - unplaced)
            notes.append(f"{_plural(previous - want)} that could not be placed no longer wanted")
        else:
            want = _scale_down(context, state, previous, target, first_seen, idle_for, notes)
    else:
        want = previous

    desired, capped_by, bound_notes = apply_bounds(context, want)
    notes.extend(bound_notes)

    reason = (
        f"{describe_signals(context, per_replica)}"
        f" (avg {stable:.1f} over {settings.stable_window_s:g}s,"
        f" {short:.1f} over {settings.panic_window_s:g}s) → {_plural(desired)}"
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
        ready_since=ready_since,
    )
    return ScalingDecision(desired, reason, capped_by, panicking), new_state


def _scale_down(
    context: ScalingContext,
    state: PolicyState,
    previous: int,
    want: int,
    first_seen: float,
    idle_for: float,
    notes: list[str],
) -> int:
    """The count after a scale-down the stable window supports, or `previous` while one of the
    rules that protect replicas holds it."""
    settings = context.settings
    now = context.now
    starting = _starting(context)
    if starting:
        # The planner retires replicas that are still starting first, so any scale-down now
        # would cancel a start that was paid for and never served (e.g. the first replica of a
        # min-0 deployment, still loading its weights): wait until they are ready.
        notes.append(
            f"scale-down to {want} held: {starting} replica{'' if starting == 1 else 's'} "
            "still starting"
        )
        return previous
    since_up = now - (state.last_scale_up_at if state.last_scale_up_at is not None else first_seen)
    if since_up < settings.cooldown_s:
        notes.append(
            f"scale-down to {want} held by cooldown ({settings.cooldown_s - since_up:.0f}s left)"
        )
        return previous
    # In steps: a tenth of the replicas (at least one) per decision, so an estimate that was
    # wrong costs one replica's cold start, not many, and the concurrency the remaining
    # replicas see can be measured before the next step.
    step = max(1, previous // 10)
    if want >= 1 or settings.min_instances > 0:
        return max(want, previous - step)
    # Scale to zero: only after `idle_to_zero_s` without a request and with nothing in
    # flight, counted from the later of the last request and the first ready replica. No
    # replica has had work for that long, so all go at once.
    if context.signals.demand <= 0 and idle_for >= settings.idle_to_zero_s:
        notes.append(f"idle {idle_for:.0f}s: scale to zero")
        return 0
    if previous > 1:
        return max(1, previous - step)
    notes.append(f"idle {idle_for:.0f}s of {settings.idle_to_zero_s:g}s before zero")
    return 1
