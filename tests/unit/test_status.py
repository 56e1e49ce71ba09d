"""The status derivation table: desired state + replicas -> one user-facing status."""

from __future__ import annotations

import pytest

from modelhost.domain.status import (
    DeploymentStatus as S,
)
from modelhost.domain.status import (
    DesiredState as D,
)
from modelhost.domain.status import (
    ReplicaCounts,
    StatusInputs,
    derive_status,
    refuses_for_capacity,
)


def rc(  # type: ignore[no-untyped-def]
    ready: int = 0,
    starting: int = 0,
    ready_current: int | None = None,
    ever: bool = True,
    pending: int = 0,
    draining: int = 0,
):
    return ReplicaCounts(
        ready=ready,
        starting=starting,
        draining=draining,
        ready_current=ready if ready_current is None else ready_current,
        ever_started=ever,
        pending=pending,
    )


CASES = [
    # desired state, desired replicas, replicas, errored reason -> status
    ("new, nothing launched yet", D.RUNNING, 1, rc(ever=False), None, S.PENDING),
    ("first replica starting", D.RUNNING, 1, rc(starting=1), None, S.INITIALIZING),
    ("one ready", D.RUNNING, 1, rc(ready=1), None, S.READY),
    ("ready while scaling up", D.RUNNING, 3, rc(ready=1, starting=2), None, S.READY),
    ("scaled to zero", D.RUNNING, 0, rc(), None, S.STANDBY),
    ("scaling to zero, last replica draining", D.RUNNING, 0, rc(draining=1), None, S.STANDBY),
    # A rolling replacement with no spare device: the old replica drains before the new one
    # can take its device. Updating (held), not pending for capacity (refused).
    (
        "rolling with no spare device: old draining, new waits for its device",
        D.RUNNING,
        1,
        rc(draining=1, pending=1),
        None,
        S.UPDATING,
    ),
    ("waking from zero", D.RUNNING, 1, rc(starting=1), None, S.INITIALIZING),
    ("restarting after crash backoff", D.RUNNING, 1, rc(), None, S.INITIALIZING),
    ("start failed", D.RUNNING, 1, rc(), "could not download x", S.ERRORED),
    ("errored but a replica serves", D.RUNNING, 1, rc(ready=1), "old failure", S.READY),
    ("stopped", D.STOPPED, 1, rc(ready=1), None, S.STOPPED),
    ("stopped beats errored", D.STOPPED, 1, rc(), "boom", S.STOPPED),
    ("deleted", D.DELETED, 1, rc(ready=2), None, S.DELETED),
    (
        "rolling: old serves, new starting",
        D.RUNNING,
        1,
        rc(1, 1, ready_current=0),
        None,
        S.UPDATING,
    ),
    (
        "rolling: new ready, old still serves",
        D.RUNNING,
        1,
        rc(2, 0, ready_current=1),
        None,
        S.UPDATING,
    ),
    ("rolling done", D.RUNNING, 1, rc(1, 0, ready_current=1), None, S.READY),
    # Issue 9 item 5: wanted replicas that cannot be placed are pending, never standby, and not
    # "initializing" either (nothing is starting), even if the deployment once ran.
    ("no capacity, never ran", D.RUNNING, 2, rc(ever=False, pending=2), None, S.PENDING),
    ("no capacity, ran before", D.RUNNING, 2, rc(pending=2), None, S.PENDING),
    ("one serves, one pending", D.RUNNING, 2, rc(ready=1, pending=1), None, S.READY),
    ("one starts, one pending", D.RUNNING, 2, rc(starting=1, pending=1), None, S.INITIALIZING),
    ("stopped while pending", D.STOPPED, 2, rc(pending=2), None, S.STOPPED),
]


@pytest.mark.parametrize(
    ("desired", "n", "counts", "err", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_derive_status(
    desired: D, n: int, counts: ReplicaCounts, err: str | None, expected: S
) -> None:
    assert derive_status(StatusInputs(desired, n, counts, err)) is expected


@pytest.mark.parametrize(
    ("status", "pending_reason", "refused"),
    [
        # Nothing serves or starts and the orchestrator said none can be placed: refuse now.
        (S.PENDING, "2 of 2 replicas pending: only 0 free A100-80GB GPUs", True),
        (S.STANDBY, "no replica can start now: only 0 free CPU slots", True),
        # Scaled to zero with room for a first replica, or just created: hold for a cold start.
        (S.STANDBY, None, False),
        (S.PENDING, None, False),
        # A replica serves or starts: the request is served or held, whatever else is pending.
        (S.READY, "1 of 2 replicas pending: only 0 free A100-80GB GPUs", False),
        (S.INITIALIZING, "1 of 2 replicas pending: only 0 free A100-80GB GPUs", False),
        (S.UPDATING, "1 of 1 replicas pending: only 0 free A100-80GB GPUs", False),
    ],
)
def test_refuses_for_capacity(status: S, pending_reason: str | None, refused: bool) -> None:
    assert refuses_for_capacity(status.value, pending_reason) is refused
