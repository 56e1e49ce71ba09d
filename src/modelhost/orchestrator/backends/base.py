"""The `Backend` contract: start, drain, stop and observe replicas; adopt them after a restart.

Every call returns quickly: starting a replica spawns it and returns, readiness and exits are
found by the backend's own background probing, and `observe()` returns the latest snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from modelhost.domain.replicas import LaunchSpec
from modelhost.orchestrator.types import ReplicaObservation, StartReplica


@dataclass(frozen=True)
class ReplicaStartSpec:
    replica_id: str
    deploy_id: str
    generation: int
    launch: LaunchSpec
    devices: tuple[str, ...]

    @classmethod
    def from_action(cls, action: StartReplica) -> ReplicaStartSpec:
        return cls(
            action.replica_id, action.deploy_id, action.generation, action.launch, action.devices
        )


@dataclass(frozen=True)
class ReplicaRecord:
    """What the reconciler persists per replica so a restarted server can adopt it."""

    replica_id: str
    deploy_id: str
    generation: int
    pid: int
    port: int
    log_path: str
    devices: tuple[str, ...]
    # The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    # pid it identifies the process, so a reused pid is never mistaken for our replica.
    proc_start_ticks: int
    started_at: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = list(self.devices)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReplicaRecord:
        return cls(
            replica_id=str(d["replica_id"]),
            deploy_id=str(d["deploy_id"]),
            generation=int(d["generation"]),
            pid=int(d["pid"]),
            port=int(d["port"]),
            log_path=str(d["log_path"]),
            devices=tuple(str(x) for x in d["devices"]),
            proc_start_ticks=int(d["proc_start_ticks"]),
            started_at=float(d["started_at"]),
        )


@dataclass(frozen=True)
class ReplicaHandle:
    """The result of `start()`. `record` is None when the process could not be spawned at all
    (the replica is then observed failed with the reason)."""

    replica_id: str
    record: ReplicaRecord | None


@dataclass(frozen=True)
class AdoptResult:
    adopted: tuple[str, ...]
    # (replica_id, why it was not adopted); its process, if one was still running, was killed.
    cleaned: tuple[tuple[str, str], ...]


class Backend(Protocol):
    def start(self, spec: ReplicaStartSpec) -> ReplicaHandle:
        """Spawn the replica and return at once; it is observed `starting` until healthy."""
        ...

    def mark_draining(self, replica_id: str) -> None:
        """Report the replica `draining` (no longer live) without signalling it yet."""
        ...

    def drain(self, replica_id: str, timeout_s: float) -> None:
        """Ask the replica to finish and exit (SIGTERM); force it after `timeout_s`."""
        ...

    def stop(self, replica_id: str) -> None:
        """Stop now: SIGTERM, a short grace, then SIGKILL."""
        ...

    def observe(self) -> list[ReplicaObservation]:
        """The latest state of every replica, terminal ones included until forgotten."""
        ...

    def forget(self, replica_id: str) -> None:
        """Drop a stopped or failed replica from `observe()`."""
        ...

    def adopt(self, records: Sequence[ReplicaRecord]) -> AdoptResult:
        """Take back replicas a previous server process started; kill and report stale ones."""
        ...

    def close(self, stop_replicas: bool = True, timeout_s: float = 20.0) -> None:
        """Stop background work; stop every replica first unless told to leave them running."""
        ...
