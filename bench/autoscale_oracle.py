"""A clairvoyant reference for bench/autoscale.py: what knowing the future would buy.

No real autoscaler can run this: it reads the trace's future arrivals. It keeps, at every
decision, the replicas that the work arriving from now until a cold start (plus one decision
interval) from now needs when every replica runs at `utilization` of its best (full-batch)
throughput, so replicas are ready exactly when the load they serve arrives, and released the
moment it has passed. Its GPU-hours are a yardstick for the real policies: a policy cannot
save much more than the gap between its own GPU-hours and this one's at the same queue wait.
"""

from __future__ import annotations

import math
from itertools import accumulate

from autoscale_sim import Controller, ReplicaModel
from modelhost.autoscaler.policy import ScalingContext, ScalingDecision
from traces import Trace

# 90% of the full-batch throughput: at 100% a replica has no slack for Poisson arrivals and the
# queue (and p95 wait) grows; measured with this bench, 0.9 keeps the p95 queue wait at zero.
UTILIZATION = 0.9
# Arrivals are averaged over this many seconds: the rate, not each request's arrival, sizes it.
SMOOTH_S = 30


def need_per_second(trace: Trace, model: ReplicaModel, utilization: float) -> list[int]:
    """Replicas the work arriving around each second of the trace needs."""
    seconds = math.ceil(trace.duration_s) + 1
    work = [0.0] * seconds
    full_step = model.step_s(model.max_batch_size)
    for request in trace.requests:
        work[min(int(request.arrival), seconds - 1)] += model.steps(request) * full_step
    prefix = [0.0, *accumulate(work)]
    capacity = model.max_batch_size * utilization
    need = []
    for second in range(seconds):
        low = max(0, second - SMOOTH_S // 2)
        high = min(seconds, second + SMOOTH_S // 2)
        rate = (prefix[high] - prefix[low]) / (high - low)
        need.append(math.ceil(rate / capacity - 1e-9))
    return need


def clairvoyant(
    trace: Trace,
    model: ReplicaModel,
    decision_interval_s: float,
    utilization: float = UTILIZATION,
) -> Controller[None]:
    need = need_per_second(trace, model, utilization)
    lookahead = math.ceil(model.cold_start_s + decision_interval_s)

    def decide(context: ScalingContext, state: None) -> tuple[ScalingDecision, None]:
        start = int(context.now)
        ahead = need[start : start + lookahead + 1] or [0]
        desired = min(max(ahead), context.settings.max_instances)
        if context.signals.demand > 0:
            desired = max(desired, 1)
        return ScalingDecision(desired, f"clairvoyant: {desired}"), None

    return Controller("oracle", decide, None)
