"""The orchestrator's pure planner: what to start, drain and stop to reach the desired state.

`plan()` compares the desired deployments with the observed replicas and returns actions; it
reads no clock and does no I/O, so every rule is a table test. The reconciler applies the actions
through a backend and records events. The rules, per deployment (in deploy_id order, sharing one
pool of free devices):

- keep exactly `desired_replicas` live (starting or ready) replicas of the current generation;
  surplus goes newest-not-ready first: starting ones are stopped, ready ones drained;
- a deployment no longer desired has all its replicas drained (stopped if still starting);
- rolling replacement: new-generation replicas start first; an old one is drained only as new
  ones become ready, so serving capacity never drops. When the old generation holds the devices
  the new one needs, one old replica at a time is drained to make room;
- a failed replica is not live, so a replacement starts, after a capped exponential backoff;
  after `max_start_failures` consecutive failed starts the deployment is errored instead;
- placement gives each replica `devices_needed` free devices of its type, never one device to
  two replicas, and an owner's CPU replicas at most `cpu_slot_limit` slots; what does not fit
  is reported pending with the reason;
- a deployment at zero replicas whose first replica would not fit now is reported too (pending
  0), so that its requests are refused at once instead of waiting for a start that can't happen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelhost.domain.replicas import CPU_TYPE, ReplicaState
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.types import (
    Action,
    DesiredDeployment,
    DrainReplica,
    FailureHistory,
    MarkErrored,
    ReplicaObservation,
    ReportPending,
    RestartPolicy,
    StartReplica,
    StopReplica,
)


def plan(
    desired: Sequence[DesiredDeployment],
    observed: Sequence[ReplicaObservation],
    inventory: Inventory,
    failures: Mapping[str, FailureHistory],
    now: float,
    policy: RestartPolicy,
) -> list[Action]:
    free = inventory.free(observed)
    taken_ids = {o.replica_id for o in observed}
    by_deploy: dict[str, list[ReplicaObservation]] = {}
    for o in sorted(observed, key=lambda o: o.replica_id):
        by_deploy.setdefault(o.deploy_id, []).append(o)
    cpu_held = _cpu_slots_held(desired, observed, inventory)

    actions: list[Action] = []
    wanted = {d.deploy_id for d in desired}
    ordered = sorted(desired, key=lambda d: d.deploy_id)
    for d in ordered:
        actions += _plan_deployment(
            d,
            by_deploy.get(d.deploy_id, []),
            inventory,
            free,
            failures.get(d.deploy_id),
            now,
            policy,
            taken_ids,
            cpu_held,
        )
    # After every placement of this pass: what is free now is what a request would get.
    for d in ordered:
        live = any(o.state.live for o in by_deploy.get(d.deploy_id, []))
        if d.desired_replicas <= 0 and not live and not _errored(failures.get(d.deploy_id), policy):
            blocked = _first_replica_blocked(d, inventory, free, cpu_held)
            if blocked is not None:
                actions.append(
                    ReportPending(d.deploy_id, 0, f"no replica can start now: {blocked}")
                )
    for deploy_id in sorted(set(by_deploy) - wanted):
        for o in by_deploy[deploy_id]:
            action = _retire(o, "deployment stopped or deleted")
            if action is not None:
                actions.append(action)
    return actions


def _plan_deployment(
    d: DesiredDeployment,
    replicas: list[ReplicaObservation],
    inventory: Inventory,
    free: dict[str, list[str]],
    history: FailureHistory | None,
    now: float,
    policy: RestartPolicy,
    taken_ids: set[str],
    cpu_held: dict[str, int],
) -> list[Action]:
    actions: list[Action] = []
    want = max(d.desired_replicas, 0)
    current = [o for o in replicas if o.state.live and o.generation == d.generation]
    old = [o for o in replicas if o.state.live and o.generation != d.generation]
    old_draining = [
        o for o in replicas if o.state == ReplicaState.DRAINING and o.generation != d.generation
    ]
    ready_current = sum(1 for o in current if o.state == ReplicaState.READY)

    errored = _errored(history, policy)
    if errored:
        assert history is not None
        reason = history.last_fail_reason or "replicas repeatedly failed to start"
        actions.append(MarkErrored(d.deploy_id, reason))

    # Surplus of the current generation: the least useful first (still starting, newest).
    if len(current) > want:
        for o in _newest_not_ready_first(current)[: len(current) - want]:
            actions.append(_retire_surplus(o, f"scaling down to {want} replicas"))

    # Old generation: starting ones serve nothing, stop them; ready ones are drained only as
    # replacements become ready, so the deployment keeps serving throughout.
    old_ready = [o for o in old if o.state == ReplicaState.READY]
    for o in old:
        if o.state == ReplicaState.STARTING:
            actions.append(
                StopReplica(o.replica_id, "replaced by a new configuration", o.deploy_id)
            )
    keep_old = max(0, want - ready_current)
    # Oldest generation and oldest start first: those have been replaced the longest.
    old_ready.sort(key=lambda o: (o.generation, o.started_at, o.replica_id))
    drained_old = old_ready[: max(0, len(old_ready) - keep_old)]
    for o in drained_old:
        actions.append(DrainReplica(o.replica_id, "replaced by a new configuration", o.deploy_id))

    need = want - len(current)
    if need <= 0 or errored:
        return actions
    if history is not None and history.failures > 0 and history.last_failure_at is not None:
        retry_at = history.last_failure_at + policy.backoff_s(history.failures)
        if now < retry_at:
            return actions

    launch = d.launch
    per_replica = launch.devices_needed
    pool = free.get(launch.gpu_type, [])
    free_before = len(pool)
    allowed = _cpu_allowance(d, cpu_held)
    placed = 0
    stamp = _base36(int(now * 1000))
    serial = 0
    while placed < need and len(pool) >= per_replica and (allowed is None or placed < allowed):
        devices = tuple(pool[:per_replica])
        del pool[:per_replica]
        replica_id = f"{d.deploy_id}-g{d.generation}-{stamp}-{serial}"
        while replica_id in taken_ids:
            serial += 1
            replica_id = f"{d.deploy_id}-g{d.generation}-{stamp}-{serial}"
        taken_ids.add(replica_id)
        serial += 1
        actions.append(StartReplica(d.deploy_id, d.generation, replica_id, devices, launch))
        placed += 1

    if allowed is not None:
        cpu_held[d.owner] = cpu_held.get(d.owner, 0) + placed
    pending = need - placed
    if pending > 0:
        if allowed is not None and placed >= allowed:
            why = _over_cpu_limit(d, cpu_held)
        else:
            why = _shortage(inventory, launch.gpu_type, per_replica, need, free_before)
        reason = f"{pending} of {want} replicas pending: {why}"
        actions.append(ReportPending(d.deploy_id, pending, reason))
        # The old generation may be what holds the devices: make room one replica at a time,
        # and only while no new replica is on its way and no old one is already draining.
        starting_current = any(o.state == ReplicaState.STARTING for o in current)
        if placed == 0 and not starting_current and not old_draining and not drained_old:
            candidates = [o for o in old_ready if _frees(o, inventory, launch.gpu_type)]
            if candidates:
                o = candidates[0]
                actions.append(
                    DrainReplica(
                        o.replica_id,
                        "rolling replacement: freeing devices for the new configuration",
                        o.deploy_id,
                    )
                )
    return actions


def _errored(history: FailureHistory | None, policy: RestartPolicy) -> bool:
    return history is not None and history.start_failures >= policy.max_start_failures


def _cpu_slots_held(
    desired: Sequence[DesiredDeployment],
    observed: Sequence[ReplicaObservation],
    inventory: Inventory,
) -> dict[str, int]:
    """CPU slots each owner's replicas hold now (starting, ready or draining: a slot is taken
    until its replica is observed gone, as for `Inventory.free`)."""
    owners = {d.deploy_id: d.owner for d in desired if d.cpu_slot_limit is not None}
    held: dict[str, int] = {}
    for o in observed:
        owner = owners.get(o.deploy_id)
        if owner is None or not o.holds_devices:
            continue
        if any(inventory.type_of(dev) == CPU_TYPE for dev in o.devices):
            held[owner] = held.get(owner, 0) + 1
    return held


def _cpu_allowance(d: DesiredDeployment, cpu_held: Mapping[str, int]) -> int | None:
    """How many more CPU replicas the owner may start now; None when no limit applies."""
    if d.launch.gpu_type != CPU_TYPE or d.cpu_slot_limit is None:
        return None
    return max(0, d.cpu_slot_limit - cpu_held.get(d.owner, 0))


def _over_cpu_limit(d: DesiredDeployment, cpu_held: Mapping[str, int]) -> str:
    held = cpu_held.get(d.owner, 0)
    return f"{d.owner} already holds {_count(held, 'CPU slot')}, the limit per user"


def _first_replica_blocked(
    d: DesiredDeployment,
    inventory: Inventory,
    free: Mapping[str, list[str]],
    cpu_held: Mapping[str, int],
) -> str | None:
    """Why a first replica of `d` could not start now, or None if it could."""
    launch = d.launch
    allowed = _cpu_allowance(d, cpu_held)
    if allowed is not None and allowed < 1:
        return _over_cpu_limit(d, cpu_held)
    available = len(free.get(launch.gpu_type, []))
    if available >= launch.devices_needed:
        return None
    return _shortage(inventory, launch.gpu_type, launch.devices_needed, 1, available)


def _newest_not_ready_first(replicas: list[ReplicaObservation]) -> list[ReplicaObservation]:
    return sorted(
        replicas,
        key=lambda o: (o.state == ReplicaState.READY, -o.started_at, o.replica_id),
    )


def _retire_surplus(o: ReplicaObservation, reason: str) -> Action:
    if o.state == ReplicaState.STARTING:
        return StopReplica(o.replica_id, reason, o.deploy_id)
    return DrainReplica(o.replica_id, reason, o.deploy_id)


def _retire(o: ReplicaObservation, reason: str) -> Action | None:
    if o.state == ReplicaState.STARTING:
        return StopReplica(o.replica_id, reason, o.deploy_id)
    if o.state == ReplicaState.READY:
        return DrainReplica(o.replica_id, reason, o.deploy_id)
    return None  # draining already, or gone


def _frees(o: ReplicaObservation, inventory: Inventory, gpu_type: str) -> bool:
    return any(inventory.type_of(dev) == gpu_type for dev in o.devices)


def _shortage(inventory: Inventory, gpu_type: str, per_replica: int, need: int, free: int) -> str:
    unit = "CPU slot" if gpu_type == CPU_TYPE else f"{gpu_type} GPU"
    total = inventory.total(gpu_type)
    if total == 0:
        return f"this server has no {unit}s"
    if per_replica > total:
        return f"each replica needs {_count(per_replica, unit)}, this server has {total}"
    if per_replica > 1:
        needed = _count(need * per_replica, unit)
        return f"needs {needed} ({per_replica} per replica), only {free} free"
    return f"only {_count(free, 'free ' + unit)}"


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def track_failures(
    failures: Mapping[str, FailureHistory],
    previous: Mapping[str, ReplicaState],
    observed: Sequence[ReplicaObservation],
    policy: RestartPolicy,
) -> dict[str, FailureHistory]:
    """Fold newly failed and newly ready replicas into the per-deployment failure histories.

    `previous` maps replica_id -> state as of the last call (the reconciler keeps
    `{o.replica_id: o.state for o in observed}` between loops), so each transition is counted
    once even though a backend keeps reporting a failed replica for a while.
    """
    result = dict(failures)
    for o in sorted(observed, key=lambda o: (o.exited_at or o.started_at, o.replica_id)):
        before = previous.get(o.replica_id)
        if o.state == before:
            continue
        history = result.get(o.deploy_id, FailureHistory())
        if o.state == ReplicaState.FAILED:
            result[o.deploy_id] = history.after_failure(o, policy)
        elif o.state == ReplicaState.READY:
            result[o.deploy_id] = history.after_ready()
    return result
