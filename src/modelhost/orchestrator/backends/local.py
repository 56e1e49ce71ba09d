"""The local backend: each replica is an engine subprocess on a 127.0.0.1 port.

Replicas run in their own process group (so a stop reaches everything they spawned) with their
output appended to `<data_dir>/logs/<deploy_id>/<replica_id>.log`. A background thread runs an
asyncio loop that watches every replica: it notices exits, probes `/health` until a replica is
ready, polls `/stats` afterwards, enforces the start-up timeout and escalates SIGTERM to SIGKILL;
it also notes how far each log has grown, which dates its lines (log_stamps).
The public methods only update state and send signals, so none of them waits on a replica
(except `adopt` and `close`, which are meant for server start and shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.backends.base import (
    AdoptResult,
    ReplicaHandle,
    ReplicaRecord,
    ReplicaStartSpec,
)
from modelhost.orchestrator.backends.local_process import (
    BACKEND_LINE_PREFIX,
    child_env,
    free_port,
    is_same_process,
    proc_start_ticks,
    reap,
    signal_group,
    spawn_engine,
)
from modelhost.orchestrator.backends.local_replica import LocalReplica
from modelhost.orchestrator.backends.watch_loop import WatchLoop, health_status
from modelhost.orchestrator.inventory import Inventory
from modelhost.runtimes import Runtime, resolve

log = logging.getLogger(__name__)


class LocalBackend(WatchLoop[LocalReplica]):
    _kind = "local backend"
    _log = log

    def __init__(
        self,
        data_dir: Path,
        inventory: Inventory,
        *,
        runtime_for: Callable[[str], Runtime] = resolve,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
        startup_timeout_s: float = 900.0,
        stop_grace_s: float = 5.0,
        retain_terminal_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(probe_interval_s, probe_timeout_s, stop_grace_s, retain_terminal_s, clock)
        self._data_dir = Path(data_dir)
        self._inventory = inventory
        self._runtime_for = runtime_for
        self._startup_timeout = startup_timeout_s
        self._start_watching("local-backend")

    # --- Backend API ---------------------------------------------------------------------

    def start(self, spec: ReplicaStartSpec) -> ReplicaHandle:
        with self._lock:
            self._check_open()
            if spec.replica_id in self._replicas:
                raise ValueError(f"replica {spec.replica_id} already exists")
            avoid = {r.port for r in self._replicas.values() if r.port and not r.state.terminal}
        log_path = self._data_dir / "logs" / spec.deploy_id / f"{spec.replica_id}.log"
        r = LocalReplica(
            replica_id=spec.replica_id,
            deploy_id=spec.deploy_id,
            generation=spec.generation,
            devices=spec.devices,
            log_path=str(log_path),
            started_at=self._clock(),
            startup_deadline=time.monotonic() + self._startup_timeout,
        )
        try:
            runtime = self._runtime_for(spec.launch.engine)
            r.health_path, r.stats_path = runtime.health_path, runtime.stats_path
            devices = [self._inventory.device(d) for d in spec.devices]
            port = free_port(avoid)
            cmd = runtime.command(spec.launch, port, devices)
            env = child_env(os.environ, runtime.env(spec.launch, devices))
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as out:
                out.write(
                    f"{BACKEND_LINE_PREFIX}starting replica {spec.replica_id} (generation "
                    f"{spec.generation}, engine {runtime.name}, port {port}, devices "
                    f"{','.join(spec.devices)})\n".encode()
                )
                out.flush()
                popen = spawn_engine(cmd, env, out, self._data_dir)
        except (OSError, ValueError) as exc:
            # A replica that cannot even be spawned is a failed start like any other, so the
            # planner's backoff and error rules apply; the reason is what the user sees.
            log.warning("could not start replica %s: %s", spec.replica_id, exc)
            r.state, r.fail_reason = ReplicaState.FAILED, f"could not start the engine: {exc}"
            r.exited_at, r.terminal_since = self._clock(), time.monotonic()
            self._note_log(r)
            with self._lock:
                self._replicas[spec.replica_id] = r
            return ReplicaHandle(spec.replica_id, None)
        r.port, r.pid, r.popen = port, popen.pid, popen
        r.start_ticks = proc_start_ticks(popen.pid) or 0
        with self._lock:
            self._replicas[spec.replica_id] = r
        self._poke()
        record = ReplicaRecord(
            replica_id=r.replica_id,
            deploy_id=r.deploy_id,
            generation=r.generation,
            pid=popen.pid,
            port=port,
            log_path=r.log_path,
            devices=r.devices,
            proc_start_ticks=r.start_ticks,
            started_at=r.started_at,
        )
        return ReplicaHandle(spec.replica_id, record)

    def adopt(self, records: Sequence[ReplicaRecord]) -> AdoptResult:
        adopted: list[str] = []
        cleaned: list[tuple[str, str]] = []
        candidates: list[ReplicaRecord] = []
        for rec in sorted(records, key=lambda rec: rec.replica_id):
            with self._lock:
                known = rec.replica_id in self._replicas
            if known:
                adopted.append(rec.replica_id)  # already ours: never a second copy
            elif not is_same_process(rec.pid, rec.proc_start_ticks):
                cleaned.append((rec.replica_id, "its process is gone"))
            else:
                candidates.append(rec)
        statuses = self._call_in_loop(self._health_statuses([r.port for r in candidates]))
        for rec, status in zip(candidates, statuses, strict=True):
            if status is None:
                # Ours (same pid and start time) but not answering: nothing can route to it.
                signal_group(rec.pid, signal.SIGKILL)
                cleaned.append((rec.replica_id, "it did not answer its health check"))
                state = ReplicaState.DRAINING
            else:
                adopted.append(rec.replica_id)
                state = ReplicaState.READY if status == 200 else ReplicaState.STARTING
            elapsed = max(0.0, self._clock() - rec.started_at)
            r = LocalReplica(
                replica_id=rec.replica_id,
                deploy_id=rec.deploy_id,
                generation=rec.generation,
                devices=rec.devices,
                log_path=rec.log_path,
                started_at=rec.started_at,
                startup_deadline=time.monotonic() + max(0.0, self._startup_timeout - elapsed),
                state=state,
                port=rec.port,
                pid=rec.pid,
                start_ticks=rec.proc_start_ticks,
                ready_at=self._clock() if state == ReplicaState.READY else None,
                exit_requested=state == ReplicaState.DRAINING,
            )
            with self._lock:
                self._replicas[rec.replica_id] = r
        self._poke()
        return AdoptResult(tuple(adopted), tuple(cleaned))

    def close(self, stop_replicas: bool = True, timeout_s: float = 20.0) -> None:
        if self._closing:
            return
        if stop_replicas:
            self._stop_all(timeout_s)
            with self._lock:
                left = [r for r in self._replicas.values() if not r.state.terminal]
            for r in left:
                if r.pid is not None:
                    signal_group(r.pid, signal.SIGKILL)
                if r.popen is not None:
                    try:
                        r.popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        log.error("replica %s (pid %s) survived SIGKILL", r.replica_id, r.pid)
        self._stop_watching()

    # --- internals -----------------------------------------------------------------------

    def _terminate(self, replica_id: str, kill_after_s: float) -> None:
        with self._lock:
            r = self._replicas.get(replica_id)
            if r is None or r.state.terminal or r.pid is None:
                return
            r.state, r.exit_requested = ReplicaState.DRAINING, True
            kill_at = time.monotonic() + max(kill_after_s, 0.0)
            r.kill_at = kill_at if r.kill_at is None else min(r.kill_at, kill_at)
            pid = r.pid
        signal_group(pid, signal.SIGTERM)
        self._poke()

    async def _tick(self, client: httpx.AsyncClient) -> None:
        now = time.monotonic()
        probes = []
        with self._lock:
            for r in self._live(now):
                self._check_process(r, now)
                if not r.state.terminal:  # a replica that just ended was noted by _finish
                    self._note_log(r)
                if r.state == ReplicaState.STARTING and r.port is not None:
                    probes.append(self._probe_health(client, r))
                elif r.state == ReplicaState.READY and r.port is not None and r.stats_path:
                    probes.append(self._probe_stats(client, r))
        await asyncio.gather(*probes)

    def _check_process(self, r: LocalReplica, now: float) -> None:
        """Called with the lock held."""
        assert r.pid is not None
        if r.popen is not None:
            code = r.popen.poll()
            exited = code is not None
        else:
            exited, code = reap(r.pid)
            if not exited:
                exited = not is_same_process(r.pid, r.start_ticks or 0)
        if exited:
            self._finish(r, code)
            return
        if r.kill_at is not None and now >= r.kill_at:
            log.warning("replica %s did not exit in time; killing it", r.replica_id)
            signal_group(r.pid, signal.SIGKILL)
            r.kill_at = None
        if (
            r.state == ReplicaState.STARTING
            and r.killed_because is None
            and now >= r.startup_deadline
        ):
            r.killed_because = f"did not become ready within {self._startup_timeout:g} s"
            log.warning("replica %s %s; killing it", r.replica_id, r.killed_because)
            signal_group(r.pid, signal.SIGKILL)

    def _finish(self, r: LocalReplica, code: int | None) -> None:
        """Called with the lock held, once the replica's main process has exited."""
        assert r.pid is not None
        # Whatever the engine left behind in its group goes with it.
        signal_group(r.pid, signal.SIGKILL)
        note = r.finish(code, self._clock(), time.monotonic())
        # The last note: a terminal replica is not watched any more.
        self._note_log(r)
        log.info("replica %s %s", r.replica_id, note)

    async def _health_statuses(self, ports: list[int]) -> list[int | None]:
        async with httpx.AsyncClient(timeout=self._probe_timeout, trust_env=False) as client:
            return list(
                await asyncio.gather(*(health_status(client, "127.0.0.1", p) for p in ports))
            )
