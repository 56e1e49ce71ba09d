"""The one place a deployment's status is derived, from its desired state and its replicas."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DeploymentStatus(StrEnum):
    PENDING = "pending"
    INITIALIZING = "initializing"
    READY = "ready"
    STANDBY = "standby"
    STOPPED = "stopped"
    ERRORED = "errored"
    UPDATING = "updating"
    DELETED = "deleted"


class DesiredState(StrEnum):
    """What the owner asked for: running (autoscaled between min and max), stopped, deleted."""

    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


# Statuses in which the deployment is still making progress (CLI waits while in these).
UNSETTLED = frozenset(
    {DeploymentStatus.PENDING, DeploymentStatus.INITIALIZING, DeploymentStatus.UPDATING}
)


@dataclass(frozen=True)
class ReplicaCounts:
    """Live replicas of a deployment, split by state and by config generation."""

    ready: int = 0
    starting: int = 0
    draining: int = 0
    ready_current: int = 0  # ready replicas running the current config generation
    ever_started: bool = False  # any replica of this deployment was ever launched
    # Wanted replicas the orchestrator could not place (no free device, or the owner's share).
    pending: int = 0


@dataclass(frozen=True)
class StatusInputs:
    desired_state: DesiredState
    desired_replicas: int
    replicas: ReplicaCounts
    errored_reason: str | None = None


def derive_status(inp: StatusInputs) -> DeploymentStatus:
    """Map desired state + observed replicas to the user-facing status.

    Order matters: deleted and stopped are the owner's word; errored wins over standby because a
    deployment whose last start failed must not look like it will start on the next request.
    """
    r = inp.replicas
    if inp.desired_state is DesiredState.DELETED:
        return DeploymentStatus.DELETED
    if inp.desired_state is DesiredState.STOPPED:
        return DeploymentStatus.STOPPED
    if inp.errored_reason is not None and r.ready == 0:
        return DeploymentStatus.ERRORED
    if r.ready > 0:
        # Replicas of an older config generation still serve: a rolling replacement is on.
        return DeploymentStatus.UPDATING if r.ready > r.ready_current else DeploymentStatus.READY
    if r.starting > 0:
        return DeploymentStatus.INITIALIZING
    if inp.desired_replicas == 0:
        return DeploymentStatus.STANDBY
    if r.draining > 0:
        # Replicas wanted, none ready or starting, but one of its own is still draining: a
        # rolling replacement with no spare device stops the old replica first and starts the
        # new one on the device it frees. Requests are held for it, not refused for capacity.
        return DeploymentStatus.UPDATING
    # Wanted replicas but none live: waiting for capacity, or nothing started yet, are pending;
    # a replica that ran and is waiting out its restart backoff is initializing again.
    if r.pending > 0 or not r.ever_started:
        return DeploymentStatus.PENDING
    return DeploymentStatus.INITIALIZING


# What a client refused for lack of capacity is told to wait before retrying: about the time a
# scale-down elsewhere takes to free a device.
NO_CAPACITY_RETRY_AFTER_S = 30


def refuses_for_capacity(status: str, pending_reason: str | None) -> bool:
    """Whether a request must be refused at once (503 `no_capacity`) rather than held for a
    cold start: no replica serves or starts, and the orchestrator reported that none can be
    placed (`pending_reason`). A deployment that is merely new (pending, no reason yet) or
    scaled to zero with room for its first replica is held as usual."""
    held = status in (DeploymentStatus.PENDING.value, DeploymentStatus.STANDBY.value)
    return held and bool(pending_reason)
