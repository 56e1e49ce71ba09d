"""What one reconcile pass tells the outside world, derived from its observations: each
deployment's status (for the store) and the routing table (for the gateway). Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

from modelhost.domain.replicas import ReplicaState
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.domain.status import DesiredState, ReplicaCounts, StatusInputs, derive_status
from modelhost.orchestrator.ports import StatusRecord, StoredDeployment
from modelhost.orchestrator.types import ReplicaObservation


def deployment_statuses(
    deployments: Sequence[StoredDeployment],
    planned: Sequence[ReplicaObservation],
    observed: Sequence[ReplicaObservation],
    pending: Mapping[str, tuple[int, str]],
    started: Set[str] = frozenset(),
    errored: Mapping[str, str] | None = None,
) -> list[StatusRecord]:
    """`pending` was planned from `planned`, an observation taken before the pass's actions;
    `observed` is taken after them. A replica that finished draining in between freed its device
    too late for this pass's plan: it still counts as draining here, so the deployment reads as
    being replaced (requests held), not as short of capacity. `started` and `errored` are the
    deployments this pass started a replica of or marked errored (the reason), which
    `deployments`, read before the pass acted, does not show yet."""
    errored = errored or {}
    by_dep: dict[str, list[ReplicaObservation]] = {}
    for o in observed:
        by_dep.setdefault(o.deploy_id, []).append(o)
    draining_ids: dict[str, set[str]] = {}
    for o in (*planned, *observed):
        if o.state == ReplicaState.DRAINING:
            draining_ids.setdefault(o.deploy_id, set()).add(o.replica_id)
    out: list[StatusRecord] = []
    for dep in deployments:
        reps = by_dep.get(dep.deploy_id, [])
        entry = pending.get(dep.deploy_id)
        n_pending, reason = entry if entry is not None else (0, None)
        counts = ReplicaCounts(
            ready=sum(o.state == ReplicaState.READY for o in reps),
            starting=sum(o.state == ReplicaState.STARTING for o in reps),
            draining=len(draining_ids.get(dep.deploy_id, ())),
            ready_current=sum(
                o.state == ReplicaState.READY and o.generation == dep.generation for o in reps
            ),
            ever_started=dep.ever_started or dep.deploy_id in started or bool(reps),
            pending=n_pending,
        )
        fail_reason = dep.fail_reason or errored.get(dep.deploy_id)
        status = derive_status(
            StatusInputs(dep.desired_state, dep.desired_replicas, counts, fail_reason)
        )
        if dep.desired_state is not DesiredState.RUNNING:
            n_pending, reason = 0, None
        elif reason and counts.draining:
            # The device it waits for is held by its own replica being replaced.
            reason = f"waiting for a replica being replaced to stop ({reason})"
        out.append(StatusRecord(dep.deploy_id, status.value, counts.ready, n_pending, reason))
    return out


def routing_table(
    deployments: Sequence[StoredDeployment], observed: Sequence[ReplicaObservation]
) -> dict[str, list[ReplicaEndpoint]]:
    """The ready replicas of every listed deployment, with the limits the gateway routes by."""
    limits = {d.deploy_id: (d.max_batch_size, d.max_active_adapters, d.engine) for d in deployments}
    table: dict[str, list[ReplicaEndpoint]] = {}
    for o in observed:
        if o.state != ReplicaState.READY or o.base_url is None or o.deploy_id not in limits:
            continue
        batch, adapters, engine = limits[o.deploy_id]
        table.setdefault(o.deploy_id, []).append(
            ReplicaEndpoint(
                o.replica_id, o.deploy_id, o.base_url, batch, o.generation, adapters, engine
            )
        )
    return table
