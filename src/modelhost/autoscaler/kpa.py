"""A Knative-KPA-style baseline policy with Knative's published defaults, for comparison.

Same shape as `modelhost.autoscaler.policy.decide`, so bench/autoscale.py can swap it in. It
follows Knative Serving's KPA decider (pkg/autoscaler/scaling/autoscaler.go) with a deployment's
`max_batch_size` as the container concurrency: target = 70% of it; desired = ceil(window average
/ target) over a 60 s stable and a 6 s panic window; panic when the panic-window count reaches 2x
the ready pods, and while panicking never decrease until a whole stable window has passed without
the panic condition; never drop below half the ready pods in one step (max scale-down rate 2);
scale to zero once the stable window has seen no traffic and the 30 s scale-to-zero grace period
has passed. Only the deployment's bounds (min/max instances) are taken from its settings, and
capacity/quota apply as for every policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelhost.autoscaler.policy import (
    ScalingContext,
    ScalingDecision,
    apply_bounds,
    describe_signals,
    window_mean,
)


@dataclass(frozen=True)
class KpaConfig:
    """Knative Serving's defaults (config-autoscaler)."""

    stable_window_s: float = 60.0
    # panic-window-percentage 10% of the stable window.
    panic_window_s: float = 6.0
    # panic-threshold-percentage 200%.
    panic_threshold: float = 2.0
    # container-concurrency-target-percentage 70%.
    target_utilization: float = 0.7
    scale_to_zero_grace_s: float = 30.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0


KNATIVE_DEFAULTS = KpaConfig()


@dataclass(frozen=True)
class KpaState:
    samples: tuple[tuple[float, float], ...] = ()
    panic_time: float | None = None
    max_panic_pods: int = 0
    # Since when the decider has wanted zero pods (the grace period runs from here).
    zero_since: float | None = None


def decide(
    context: ScalingContext, state: KpaState, config: KpaConfig = KNATIVE_DEFAULTS
) -> tuple[ScalingDecision, KpaState]:
    now = context.now
    demand = float(context.signals.demand)
    samples = tuple(s for s in state.samples if s[0] > now - config.stable_window_s)
    samples += ((now, demand),)
    stable = window_mean(samples, now, config.stable_window_s)
    panic = window_mean(samples, now, config.panic_window_s)

    target = context.max_batch_size * config.target_utilization
    ready = max(1.0, float(context.ready_replicas))
    max_up = math.ceil(config.max_scale_up_rate * ready)
    max_down = math.floor(ready / config.max_scale_down_rate)
    dspc = math.ceil(stable / target)
    dppc = math.ceil(panic / target)
    stable_pods = min(max(dspc, max_down), max_up)
    panic_pods = min(max(dppc, max_down), max_up)

    panic_time = state.panic_time
    max_panic_pods = state.max_panic_pods
    over_threshold = dppc / ready >= config.panic_threshold
    if over_threshold:
        panic_time = now
    elif panic_time is not None and now > panic_time + config.stable_window_s:
        panic_time = None
        max_panic_pods = 0

    want = stable_pods
    if panic_time is not None:
        want = max(want, panic_pods)
        # Knative never decreases while panicking, only raises its high-water mark.
        max_panic_pods = max(max_panic_pods, want)
        want = max_panic_pods

    notes: list[str] = []
    zero_since = state.zero_since
    if want == 0 and context.settings.min_instances == 0 and context.current_replicas > 0:
        zero_since = zero_since if zero_since is not None else now
        if now - zero_since < config.scale_to_zero_grace_s:
            want = 1
            notes.append("scale-to-zero grace period")
    else:
        zero_since = None

    desired, capped_by, bound_notes = apply_bounds(context, want)
    notes.extend(bound_notes)
    if panic_time is not None:
        notes.insert(0, "panic")
    reason = (
        f"KPA: {describe_signals(context, target)}"
        f" (avg {stable:.1f} over {config.stable_window_s:g}s,"
        f" {panic:.1f} over {config.panic_window_s:g}s) → {desired}"
    )
    if notes:
        reason += "; " + "; ".join(notes)
    new_state = KpaState(samples, panic_time, max_panic_pods, zero_since)
    return ScalingDecision(desired, reason, capped_by, panic_time is not None), new_state
