"""A `Backend` in memory: replicas are records the test moves between states, no process runs.

Unit tests script it (`ready`, `crash`, `set_load`, `survivors` for adoption); the component
app uses it with `auto_ready` (and in-process engines, tests/component/inprocess_engines.py),
so the API, the gateway and the real reconciler run without engine processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.backends.base import (
    AdoptResult,
    ReplicaHandle,
    ReplicaRecord,
    ReplicaStartSpec,
)
from modelhost.orchestrator.types import ReplicaObservation

FIRST_PORT = 20000
FIRST_PID = 500000


class LaunchFailed(Exception):
    """The replica could not start; the message is its fail_reason."""


@dataclass
class Survivor:
    """A replica process a previous server left behind, as the fake backend's world knows it."""

    state: ReplicaState = ReplicaState.READY
    answers_health: bool = True


class FakeBackend:
    def __init__(self, clock: Callable[[], float] = time.time, *, auto_ready: bool = False) -> None:
        self.clock = clock
        # Report a replica ready at the first observe() after its start (the component app).
        self.auto_ready = auto_ready
        self.replicas: dict[str, ReplicaObservation] = {}
        self.specs: dict[str, ReplicaStartSpec] = {}
        # Every call that acts on a replica, in order: ("start" | "mark_draining" | "drain" |
        # "stop" | "forget", replica_id).
        self.calls: list[tuple[str, str]] = []
        self.drain_timeouts: dict[str, float] = {}
        # Deployments whose next starts fail at once (could not be spawned), with the reason.
        self.spawn_failures: dict[str, str] = {}
        # Processes that outlived a previous server, by replica id (for adopt()).
        self.survivors: dict[str, Survivor] = {}
        self.closed = False
        self._next = 0
        self._lock = threading.Lock()

    # ---- Backend ---------------------------------------------------------------------------
    def start(self, spec: ReplicaStartSpec) -> ReplicaHandle:
        with self._lock:
            if self.closed:
                raise RuntimeError("the backend is closed")
            if spec.replica_id in self.replicas:
                raise ValueError(f"replica {spec.replica_id} already exists")
            self.calls.append(("start", spec.replica_id))
            self.specs[spec.replica_id] = spec
            serial = self._next
            self._next += 1
            reason = self.spawn_failures.get(spec.deploy_id)
        # Outside the lock: whatever runs the replica may take a moment to come up, and
        # observe() must never wait for it.
        try:
            port = self._launch(spec, serial) if reason is None else None
        except LaunchFailed as exc:
            port, reason = None, str(exc)
        now = self.clock()
        with self._lock:
            if port is None:
                self.replicas[spec.replica_id] = self._observation(
                    spec, ReplicaState.FAILED, None, now, exited_at=now, fail_reason=reason
                )
                return ReplicaHandle(spec.replica_id, None)
            record = ReplicaRecord(
                replica_id=spec.replica_id,
                deploy_id=spec.deploy_id,
                generation=spec.generation,
                pid=FIRST_PID + serial,
                port=port,
                log_path="",
                devices=spec.devices,
                proc_start_ticks=1,
                started_at=now,
            )
            self.replicas[spec.replica_id] = self._observation(
                spec, ReplicaState.STARTING, record, now
            )
            return ReplicaHandle(spec.replica_id, record)

    def mark_draining(self, replica_id: str) -> None:
        with self._lock:
            self.calls.append(("mark_draining", replica_id))
            o = self.replicas.get(replica_id)
            if o is not None and o.state.live:
                self.replicas[replica_id] = replace(o, state=ReplicaState.DRAINING)

    def drain(self, replica_id: str, timeout_s: float) -> None:
        with self._lock:
            self.calls.append(("drain", replica_id))
            self.drain_timeouts[replica_id] = timeout_s
            exited = self._exit(replica_id)
        if exited:
            self._release(replica_id)

    def stop(self, replica_id: str) -> None:
        with self._lock:
            self.calls.append(("stop", replica_id))
            exited = self._exit(replica_id)
        if exited:
            self._release(replica_id)

    def observe(self) -> list[ReplicaObservation]:
        with self._lock:
            if self.auto_ready:
                for rid, o in self.replicas.items():
                    if o.state == ReplicaState.STARTING:
                        self.replicas[rid] = replace(
                            o, state=ReplicaState.READY, ready_at=self.clock()
                        )
            return list(self.replicas.values())

    def forget(self, replica_id: str) -> None:
        with self._lock:
            o = self.replicas.get(replica_id)
            if o is not None and o.state.terminal:
                self.calls.append(("forget", replica_id))
                del self.replicas[replica_id]

    def adopt(self, records: Sequence[ReplicaRecord]) -> AdoptResult:
        """Like the local backend: a record whose process still runs and answers is taken back
        (once: one already managed is not taken twice), any other is cleaned."""
        adopted: list[str] = []
        cleaned: list[tuple[str, str]] = []
        with self._lock:
            for rec in records:
                if rec.replica_id in self.replicas:
                    adopted.append(rec.replica_id)
                    continue
                alive = self.survivors.get(rec.replica_id)
                if alive is None:
                    cleaned.append((rec.replica_id, "its process is gone"))
                    continue
                if not alive.answers_health:
                    del self.survivors[rec.replica_id]
                    cleaned.append((rec.replica_id, "it did not answer its health check"))
                    continue
                self.replicas[rec.replica_id] = ReplicaObservation(
                    replica_id=rec.replica_id,
                    deploy_id=rec.deploy_id,
                    generation=rec.generation,
                    state=alive.state,
                    port=rec.port,
                    pid=rec.pid,
                    devices=rec.devices,
                    started_at=rec.started_at,
                    ready_at=self.clock() if alive.state == ReplicaState.READY else None,
                )
                adopted.append(rec.replica_id)
        return AdoptResult(tuple(adopted), tuple(cleaned))

    def close(self, stop_replicas: bool = True, timeout_s: float = 20.0) -> None:
        with self._lock:
            self.closed = True
            exited = [rid for rid in list(self.replicas) if stop_replicas and self._exit(rid)]
        for rid in exited:
            self._release(rid)

    # ---- what the test does to replicas ------------------------------------------------------
    def ready(self, replica_id: str) -> None:
        with self._lock:
            o = self.replicas[replica_id]
            self.replicas[replica_id] = replace(o, state=ReplicaState.READY, ready_at=self.clock())

    def crash(self, replica_id: str, reason: str, exit_code: int = 1) -> None:
        """The process exited on its own: failed, with the reason the backend would give."""
        with self._lock:
            o = self.replicas[replica_id]
            self.replicas[replica_id] = replace(
                o,
                state=ReplicaState.FAILED,
                exited_at=self.clock(),
                exit_code=exit_code,
                fail_reason=reason,
                running=None,
                waiting=None,
            )
        self._release(replica_id)

    def set_load(self, replica_id: str, running: int, waiting: int) -> None:
        with self._lock:
            o = self.replicas[replica_id]
            self.replicas[replica_id] = replace(o, running=running, waiting=waiting)

    def state(self, replica_id: str) -> ReplicaState:
        return self.replicas[replica_id].state

    def ids(self, *states: ReplicaState) -> list[str]:
        """Replica ids in start order, of the given states (any state when none given)."""
        return [r for r, o in self.replicas.items() if not states or o.state in states]

    # ---- hooks for a backend that also runs something per replica ------------------------------
    def _launch(self, spec: ReplicaStartSpec, serial: int) -> int:
        """Bring the replica up and return its port (raise LaunchFailed if it cannot start).
        Here nothing listens on it."""
        return FIRST_PORT + serial

    def _release(self, replica_id: str) -> None:
        """The replica is gone: free whatever `_launch` set up."""

    # ---- internals -----------------------------------------------------------------------------
    def _exit(self, replica_id: str) -> bool:
        """Called with the lock held: stopped now; True if it was running."""
        o = self.replicas.get(replica_id)
        if o is None or o.state.terminal:
            return False
        self.replicas[replica_id] = replace(
            o, state=ReplicaState.STOPPED, exited_at=self.clock(), exit_code=0
        )
        return True

    @staticmethod
    def _observation(
        spec: ReplicaStartSpec,
        state: ReplicaState,
        record: ReplicaRecord | None,
        now: float,
        *,
        exited_at: float | None = None,
        fail_reason: str | None = None,
    ) -> ReplicaObservation:
        return ReplicaObservation(
            replica_id=spec.replica_id,
            deploy_id=spec.deploy_id,
            generation=spec.generation,
            state=state,
            port=record.port if record else None,
            pid=record.pid if record else None,
            devices=spec.devices,
            started_at=now,
            exited_at=exited_at,
            exit_code=None if exited_at is None else 1,
            fail_reason=fail_reason,
        )
