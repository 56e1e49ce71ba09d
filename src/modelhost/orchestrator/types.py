"""Value types shared by the planner, the backends and the reconciler.

Everything here is a frozen dataclass or an enum: the planner is a pure function over these, and
the reconciler (the lead's glue) turns its actions into backend calls and store updates.

Times are wall-clock seconds (`time.time()`), the same clock the reconciler passes as `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelhost.domain.replicas import LaunchSpec, ReplicaState


@dataclass(frozen=True)
class DesiredDeployment:
    deploy_id: str
    # Bumped by the reconciler on each config change that needs a rolling replacement.
    generation: int
    desired_replicas: int
    launch: LaunchSpec
    drain_timeout_s: float = 30.0
    # Fair share of the CPU slots: the owner's CPU replicas (over all their deployments) may
    # hold at most this many slots at once; None is no limit (GPUs have the reserved quota).
    owner: str = ""
    cpu_slot_limit: int | None = None


@dataclass(frozen=True)
class ReplicaObservation:
    replica_id: str
    deploy_id: str
    generation: int
    state: ReplicaState
    port: int | None
    pid: int | None
    devices: tuple[str, ...]
    started_at: float
    ready_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    # Why a failed replica failed, in words a user can act on (the engine's fatal line if it
    # printed one, else the exit code and the last line of its output).
    fail_reason: str | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None  # 0..1, where the engine reports it (vLLM)
    # The engine's busy clock, where it has one (builtin, simulator): seconds with a request
    # in flight and seconds since start (the metric sampler's busy fraction).
    busy_s: float | None = None
    uptime_s: float | None = None
    log_path: str | None = None
    # Where the engine listens: 127.0.0.1 for the local backend; the node's address Ray
    # reports for a replica on a Ray cluster (orchestrator/backends/ray_backend.py).
    host: str = "127.0.0.1"

    @property
    def holds_devices(self) -> bool:
        """A process may still be using the devices until it is observed gone."""
        return not self.state.terminal

    @property
    def base_url(self) -> str | None:
        return f"http://{self.host}:{self.port}" if self.port is not None else None


@dataclass(frozen=True)
class RestartPolicy:
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # Consecutive starts that fail before the replica ever became ready -> deployment errored.
    max_start_failures: int = 3
    # A crash after this long serving is not part of a crash loop: the backoff starts over.
    stable_after_s: float = 300.0

    def backoff_s(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # Cap the exponent too, so a long crash history cannot overflow the float.
        return float(min(self.backoff_base_s * 2 ** min(failures - 1, 62), self.backoff_max_s))


@dataclass(frozen=True)
class FailureHistory:
    """A deployment's recent failures; kept by the reconciler, read by the planner.

    `start_failures` counts consecutive replicas that died before becoming ready (reset when a
    replica becomes ready); `failures` counts consecutive failures of any kind and drives the
    restart backoff.
    """

    start_failures: int = 0
    failures: int = 0
    last_failure_at: float | None = None
    last_fail_reason: str | None = None

    def after_failure(self, obs: ReplicaObservation, policy: RestartPolicy) -> FailureHistory:
        at = obs.exited_at if obs.exited_at is not None else obs.started_at
        served_long = obs.ready_at is not None and at - obs.ready_at >= policy.stable_after_s
        return FailureHistory(
            start_failures=self.start_failures + 1 if obs.ready_at is None else 0,
            failures=1 if served_long else self.failures + 1,
            last_failure_at=at,
            last_fail_reason=obs.fail_reason or self.last_fail_reason,
        )

    def after_ready(self) -> FailureHistory:
        # `failures` is kept: a replica that crashes right after becoming ready is still a
        # crash loop and must keep backing off.
        return replace(self, start_failures=0)


# --- Actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartReplica:
    deploy_id: str
    generation: int
    replica_id: str
    devices: tuple[str, ...]
    launch: LaunchSpec


@dataclass(frozen=True)
class DrainReplica:
    """Stop routing to the replica, let its in-flight requests finish, then stop it."""

    replica_id: str
    reason: str
    deploy_id: str


@dataclass(frozen=True)
class StopReplica:
    """Stop at once: the replica serves nothing (still starting)."""

    replica_id: str
    reason: str
    deploy_id: str


@dataclass(frozen=True)
class MarkErrored:
    deploy_id: str
    reason: str


@dataclass(frozen=True)
class ReportPending:
    """Capacity is short: `pending` replicas of the deployment could not be placed. `pending`
    is 0 for a deployment at zero replicas whose first replica would not fit now (its requests
    are refused at once rather than held for a cold start that cannot happen). No ReportPending
    for a deployment means nothing is short."""

    deploy_id: str
    pending: int
    reason: str


Action = StartReplica | DrainReplica | StopReplica | MarkErrored | ReportPending
