"""Discrete-event simulation of one deployment under an autoscaling policy.

It drives the real policy code (modelhost.autoscaler.policy.decide / kpa.decide) with a replica
model, so the numbers in bench/autoscale.py are those of the code that runs in `modelhost serve`:

- a replica takes `cold_start_s` from start to ready and is billed (GPU time) from start to stop;
- it runs up to `max_batch_size` requests at once; the gateway keeps one FIFO queue per deployment
  and hands the head of it to the ready replica with the fewest requests (least outstanding);
- a request needs ceil(context / prefill_chunk) prefill steps plus one step per generated token,
  and a step takes tpot_base_s * (1 + tpot_growth * (batch - 1)): continuous batching, where a
  bigger batch makes every step a little slower but the replica's throughput much higher;
- the policy decides every `decision_interval_s`, and at once when a request arrives while the
  deployment has no replica (the activator's nudge); scale-down cancels starting replicas first,
  then drains the least-loaded ready ones (no new requests, stopped when empty).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelhost.autoscaler.policy import LoadSignals, ScalingContext, ScalingDecision
from modelhost.domain.autoscaling import AutoscalingSettings
from traces import Request, Trace

S = TypeVar("S")


@dataclass(frozen=True)
class ReplicaModel:
    max_batch_size: int = 32
    # Start to ready for a GPU model: process start, weights from local disk, warm-up.
    cold_start_s: float = 20.0
    # One decode step of a ~7B model at batch 1 on a datacenter GPU.
    tpot_base_s: float = 0.02
    # Each extra sequence makes a step 2% slower: batch 32 -> 1.62x step time, 20x throughput.
    tpot_growth: float = 0.02
    prefill_chunk_tokens: int = 512
    gpus_per_replica: int = 1

    def step_s(self, batch: int) -> float:
        return self.tpot_base_s * (1.0 + self.tpot_growth * (batch - 1))

    def steps(self, request: Request) -> int:
        return math.ceil(request.context_tokens / self.prefill_chunk_tokens) + max(
            1, request.output_tokens
        )


class Controller(Generic[S]):
    """A policy function plus its state: what the autoscaler loop keeps per deployment."""

    def __init__(
        self,
        name: str,
        decide: Callable[[ScalingContext, S], tuple[ScalingDecision, S]],
        state: S,
    ) -> None:
        self.name = name
        self._decide = decide
        self._state = state

    def __call__(self, context: ScalingContext) -> ScalingDecision:
        decision, self._state = self._decide(context, self._state)
        return decision


@dataclass
class _Replica:
    started_at: float
    ready_at: float
    stopped_at: float | None = None
    draining: bool = False
    # Steps completed by a request that has been in the batch since the replica started: a
    # request admitted at vtime v with n steps finishes when vtime reaches v + n.
    vtime: float = 0.0
    updated_at: float = 0.0
    running: list[tuple[float, int]] = field(default_factory=list)
    version: int = 0

    def serving(self, now: float) -> bool:
        return self.stopped_at is None and not self.draining and self.ready_at <= now

    def advance(self, now: float, model: ReplicaModel) -> None:
        if self.running:
            self.vtime += (now - self.updated_at) / model.step_s(len(self.running))
        self.updated_at = now


@dataclass(frozen=True)
class SimResult:
    policy: str
    gpu_hours: float
    queue_wait_s: tuple[float, ...]
    e2e_s: tuple[float, ...]
    held_cold: int
    scale_ups: int
    scale_downs: int
    replica_starts: int
    max_replicas: int
    end_s: float


class Simulation:
    """One run of a trace against one controller. `run()` returns the result."""

    def __init__(
        self,
        trace: Trace,
        controller: Callable[[ScalingContext], ScalingDecision],
        model: ReplicaModel,
        settings: AutoscalingSettings,
        decision_interval_s: float = 2.0,
        initial_replicas: int = 0,
        name: str = "policy",
    ) -> None:
        self.trace = trace
        self.requests: Sequence[Request] = trace.requests
        self.controller = controller
        self.model = model
        self.settings = settings
        self.interval = decision_interval_s
        self.name = name
        n = len(self.requests)
        self.start = [math.nan] * n
        self.finish = [math.nan] * n
        self.held = [False] * n
        self.queue: deque[int] = deque()
        # Every replica ever started; ready ones at t=0 are warm (already paid for before).
        self.replicas = [_Replica(0.0, 0.0) for _ in range(initial_replicas)]
        # Indices of replicas not yet stopped (draining ones included); scanned on every event.
        self.alive: list[int] = list(range(initial_replicas))
        self.initial_replicas = initial_replicas
        self.completions: list[tuple[float, int, int]] = []  # (time, version, replica index)
        self.readies: list[tuple[float, int]] = []
        self.last_request_at: float | None = None
        self.desired = initial_replicas
        self.scale_ups = 0
        self.scale_downs = 0
        self.max_replicas = initial_replicas

    # -- replica bookkeeping -------------------------------------------------------------------
    def _live(self) -> list[_Replica]:
        """Replicas that count towards the deployment: starting or ready, not draining."""
        return [self.replicas[i] for i in self.alive if not self.replicas[i].draining]

    def _stop(self, replica: _Replica, now: float) -> None:
        replica.stopped_at = now
        self.alive = [i for i in self.alive if self.replicas[i].stopped_at is None]

    def _schedule_completion(self, index: int) -> None:
        replica = self.replicas[index]
        replica.version += 1
        if replica.running:
            steps_left = replica.running[0][0] - replica.vtime
            at = replica.updated_at + max(0.0, steps_left) * self.model.step_s(len(replica.running))
            heapq.heappush(self.completions, (at, replica.version, index))

    def _dispatch(self, now: float) -> None:
        limit = self.model.max_batch_size
        while self.queue:
            best = -1
            fewest = limit
            for index in self.alive:
                replica = self.replicas[index]
                if len(replica.running) < fewest and replica.serving(now):
                    best, fewest = index, len(replica.running)
            if best < 0:
                return
            request_index = self.queue.popleft()
            replica = self.replicas[best]
            replica.advance(now, self.model)
            steps = self.model.steps(self.requests[request_index])
            heapq.heappush(replica.running, (replica.vtime + steps, request_index))
            self.start[request_index] = now
            self._schedule_completion(best)

    def _complete(self, now: float, index: int) -> None:
        replica = self.replicas[index]
        replica.advance(now, self.model)
        # The tolerance absorbs float error between the scheduled time and the advanced vtime.
        while replica.running and replica.running[0][0] <= replica.vtime + 1e-6:
            _, request_index = heapq.heappop(replica.running)
            self.finish[request_index] = now
        if replica.draining and not replica.running:
            self._stop(replica, now)
        self._schedule_completion(index)

    def _apply(self, now: float, desired: int) -> None:
        live = self._live()
        if desired > self.desired:
            self.scale_ups += 1
        elif desired < self.desired:
            self.scale_downs += 1
        self.desired = desired
        if desired > len(live):
            ready_at = now + self.model.cold_start_s
            for _ in range(desired - len(live)):
                self.replicas.append(_Replica(now, ready_at, updated_at=now))
                self.alive.append(len(self.replicas) - 1)
                heapq.heappush(self.readies, (ready_at, len(self.replicas) - 1))
        elif desired < len(live):
            # Cancel the newest starting replicas first (nothing to drain), then drain the
            # least-loaded ready ones.
            order = sorted(live, key=lambda r: (r.ready_at <= now, len(r.running), -r.started_at))
            for replica in order[: len(live) - desired]:
                if replica.ready_at > now or not replica.running:
                    self._stop(replica, now)
                else:
                    replica.draining = True
        self.max_replicas = max(self.max_replicas, len(self._live()))

    def _decide(self, now: float) -> None:
        live = self._live()
        ready = sum(1 for r in live if r.ready_at <= now)
        in_flight = sum(len(self.replicas[i].running) for i in self.alive)
        waiting = len(self.queue)
        signals = LoadSignals(
            in_flight=in_flight,
            queued=waiting if ready else 0,
            engine_running=in_flight,
            engine_waiting=0,
            held_cold=0 if ready else waiting,
        )
        context = ScalingContext(
            now=now,
            settings=self.settings,
            max_batch_size=self.model.max_batch_size,
            current_replicas=len(live),
            ready_replicas=ready,
            signals=signals,
            placeable_max=self.settings.max_instances,
            last_request_at=self.last_request_at,
        )
        self._apply(now, self.controller(context).desired)

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> SimResult:
        n = len(self.requests)
        next_arrival = 0
        next_tick = 0.0
        done = 0
        now = 0.0
        while next_arrival < n or done < n or now < self.trace.duration_s:
            arrival_at = self.requests[next_arrival].arrival if next_arrival < n else math.inf
            completion_at = self.completions[0][0] if self.completions else math.inf
            ready_at = self.readies[0][0] if self.readies else math.inf
            now = min(arrival_at, completion_at, ready_at, next_tick)
            if now == math.inf:
                break
            # Same-time order: free slots, then new replicas, then arrivals, then the policy.
            if completion_at == now:
                _, version, index = heapq.heappop(self.completions)
                if version == self.replicas[index].version:
                    before = len(self.replicas[index].running)
                    self._complete(now, index)
                    done += before - len(self.replicas[index].running)
                    self._dispatch(now)
            elif ready_at == now:
                heapq.heappop(self.readies)
                self._dispatch(now)
            elif arrival_at == now:
                self.queue.append(next_arrival)
                self.last_request_at = now
                live = self._live()
                if not any(r.ready_at <= now for r in live):
                    self.held[next_arrival] = True
                next_arrival += 1
                if not live:
                    self._decide(now)  # the activator asks for a replica at once
                self._dispatch(now)
            else:
                self._decide(now)
                self._dispatch(now)
                next_tick += self.interval
        return self._result(now)

    def _result(self, end: float) -> SimResult:
        gpu_seconds = sum(
            ((r.stopped_at if r.stopped_at is not None else end) - r.started_at)
            for r in self.replicas
        )
        return SimResult(
            policy=self.name,
            gpu_hours=gpu_seconds * self.model.gpus_per_replica / 3600.0,
            queue_wait_s=tuple(
                s - r.arrival for s, r in zip(self.start, self.requests, strict=True)
            ),
            e2e_s=tuple(f - r.arrival for f, r in zip(self.finish, self.requests, strict=True)),
            held_cold=sum(self.held),
            scale_ups=self.scale_ups,
            scale_downs=self.scale_downs,
            replica_starts=len(self.replicas) - self.initial_replicas,
            max_replicas=self.max_replicas,
            end_s=end,
        )


def peak_replicas(trace: Trace, model: ReplicaModel, window_s: float = 60.0) -> int:
    """Replicas that static provisioning at peak needs: the busiest `window_s` of the trace,
    served at full batch (the replica's best throughput), fits exactly (Little's law)."""
    requests = trace.requests
    full_step = model.step_s(model.max_batch_size)
    work = [model.steps(r) * full_step for r in requests]
    best = 0.0
    total = 0.0
    left = 0
    for right, request in enumerate(requests):
        total += work[right]
        while requests[left].arrival <= request.arrival - window_s:
            total -= work[left]
            left += 1
        best = max(best, total / window_s)
    return max(1, math.ceil(best / model.max_batch_size))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
