"""The local backend's per-replica record and how a finished process is classified."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.backends.local_process import (
    BACKEND_LINE_PREFIX,
    exit_reason,
    last_output_line,
    read_tail,
)
from modelhost.orchestrator.backends.watch_loop import HEALTH_PATH, STATS_PATH, replica_observation
from modelhost.orchestrator.types import ReplicaObservation


@dataclass
class LocalReplica:
    """The local backend's mutable record of one replica (guarded by the backend's lock)."""

    replica_id: str
    deploy_id: str
    generation: int
    devices: tuple[str, ...]
    log_path: str
    started_at: float
    startup_deadline: float  # monotonic
    health_path: str = HEALTH_PATH
    stats_path: str | None = STATS_PATH
    state: ReplicaState = ReplicaState.STARTING
    port: int | None = None
    pid: int | None = None
    start_ticks: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ready_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    fail_reason: str | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    busy_s: float | None = None
    uptime_s: float | None = None
    # Set once drain/stop was asked for: the exit that follows is a stop, not a failure.
    exit_requested: bool = False
    # Why the backend killed it itself (start-up timeout); reported as the fail reason.
    killed_because: str | None = None
    kill_at: float | None = None  # monotonic; SIGKILL the group then if still running
    terminal_since: float | None = None  # monotonic
    # Log size of the last note in its stamps file (log_stamps); None until read back.
    log_noted: int | None = None

    def observation(self) -> ReplicaObservation:
        return replica_observation(self)

    def finish(self, code: int | None, now: float, now_monotonic: float) -> str:
        """Record the exit: a stop that was asked for, or a failure with its reason. Returns a
        note that is also appended to the replica's log, where users look first."""
        self.exit_code, self.exited_at, self.terminal_since = code, now, now_monotonic
        self.running = self.waiting = None
        self.kill_at = None
        if self.exit_requested and self.killed_because is None:
            self.state = ReplicaState.STOPPED
            note = f"stopped ({'exit code ' + str(code) if code is not None else 'gone'})"
        else:
            lines = read_tail(self.log_path)
            self.state = ReplicaState.FAILED
            reason = exit_reason(lines, code, self.ready_at is not None)
            if self.killed_because is not None:
                last = last_output_line(lines)
                reason = (
                    f"{self.killed_because}; last output: {last}" if last else (self.killed_because)
                )
            self.fail_reason = reason
            note = f"failed: {reason}"
        try:
            with open(self.log_path, "a", encoding="utf-8") as out:
                out.write(f"{BACKEND_LINE_PREFIX}replica {note}\n")
        except OSError:
            pass  # a log we cannot write must not stop the bookkeeping
        return note
