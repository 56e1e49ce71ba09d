"""What the local and the Ray backend share: their replica records behind one lock, the
`Backend` calls that only touch those records, and the monitor: a background thread running an
asyncio loop that calls the backend's `_tick` every `probe_interval_s` (sooner while a replica
starts, or when poked), plus the HTTP probes of `/health` and `/stats`. What differs (spawning,
process checks, Ray calls) stays in each backend's `_tick` and `_terminate`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.backends import log_stamps
from modelhost.orchestrator.backends.engine_stats import EngineStats, parse_stats
from modelhost.orchestrator.types import ReplicaObservation

_T = TypeVar("_T")

# Every engine serves these (the engine contract); adopted replicas are probed on them because
# a record does not say which runtime started the process.
HEALTH_PATH = "/health"
STATS_PATH = "/stats"

_STARTING_PROBE_S = 0.2


class WatchedReplica(Protocol):
    """The fields a backend's replica record has in common (LocalReplica, RayReplica)."""

    replica_id: str
    deploy_id: str
    generation: int
    devices: tuple[str, ...]
    log_path: str
    started_at: float
    health_path: str
    stats_path: str | None
    state: ReplicaState
    port: int | None
    pid: int | None
    ready_at: float | None
    exited_at: float | None
    exit_code: int | None
    fail_reason: str | None
    running: int | None
    waiting: int | None
    kv_cache_usage: float | None
    busy_s: float | None
    uptime_s: float | None
    exit_requested: bool
    terminal_since: float | None
    log_noted: int | None  # log size at the last note in its stamps file; None: not read yet

    def observation(self) -> ReplicaObservation: ...


R = TypeVar("R", bound=WatchedReplica)


def replica_observation(r: WatchedReplica, host: str = "127.0.0.1") -> ReplicaObservation:
    return ReplicaObservation(
        replica_id=r.replica_id,
        deploy_id=r.deploy_id,
        generation=r.generation,
        state=r.state,
        port=r.port,
        pid=r.pid,
        devices=r.devices,
        started_at=r.started_at,
        ready_at=r.ready_at,
        exited_at=r.exited_at,
        exit_code=r.exit_code,
        fail_reason=r.fail_reason,
        running=r.running,
        waiting=r.waiting,
        kv_cache_usage=r.kv_cache_usage,
        busy_s=r.busy_s,
        uptime_s=r.uptime_s,
        log_path=r.log_path,
        host=host,
    )


async def health_status(client: httpx.AsyncClient, host: str, port: int) -> int | None:
    """The status `/health` answers with, or None when the engine does not answer."""
    try:
        resp = await client.get(f"http://{host}:{port}{HEALTH_PATH}")
    except httpx.HTTPError:
        return None
    return resp.status_code


class WatchLoop(Generic[R]):
    """Base of a backend whose replicas are records of type R, watched by a monitor thread."""

    _kind: ClassVar[str]  # "local backend", "Ray backend": in messages
    _log: ClassVar[logging.Logger]  # the backend module's logger
    _loop: asyncio.AbstractEventLoop
    _wake: asyncio.Event
    _thread: threading.Thread

    def __init__(
        self,
        probe_interval_s: float,
        probe_timeout_s: float,
        stop_grace_s: float,
        retain_terminal_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._interval = probe_interval_s
        self._probe_timeout = probe_timeout_s
        self._stop_grace = stop_grace_s
        self._retain = retain_terminal_s
        self._clock = clock
        self._lock = threading.Lock()
        self._replicas: dict[str, R] = {}
        self._closing = False

    def _start_watching(self, thread_name: str) -> None:
        """Start the monitor; the last step of the backend's __init__."""
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # --- what each backend does ----------------------------------------------------------

    def _terminate(self, replica_id: str, kill_after_s: float) -> None:
        raise NotImplementedError

    async def _tick(self, client: httpx.AsyncClient) -> None:
        raise NotImplementedError

    def _host(self, r: R) -> str:
        return "127.0.0.1"

    def _where(self, r: R) -> str:
        return f"port {r.port}"

    # --- Backend API ---------------------------------------------------------------------

    def mark_draining(self, replica_id: str) -> None:
        with self._lock:
            r = self._replicas.get(replica_id)
            if r is not None and r.state.live:
                r.state, r.exit_requested = ReplicaState.DRAINING, True

    def drain(self, replica_id: str, timeout_s: float) -> None:
        self._terminate(replica_id, timeout_s)

    def stop(self, replica_id: str) -> None:
        self._terminate(replica_id, self._stop_grace)

    def observe(self) -> list[ReplicaObservation]:
        with self._lock:
            return [self._replicas[k].observation() for k in sorted(self._replicas)]

    def forget(self, replica_id: str) -> None:
        with self._lock:
            r = self._replicas.get(replica_id)
            if r is not None and r.state.terminal:
                del self._replicas[replica_id]

    # --- the monitor ---------------------------------------------------------------------

    def _check_open(self) -> None:
        """Called with the lock held by `start`."""
        if self._closing:
            raise RuntimeError(f"the {self._kind} is closed")

    def _stop_all(self, timeout_s: float) -> None:
        """Terminate every live replica and wait up to `timeout_s` for them to end. The monitor
        keeps running meanwhile: it is what notices the exits."""
        with self._lock:
            ids = [k for k, r in self._replicas.items() if not r.state.terminal]
        for replica_id in ids:
            self._terminate(replica_id, min(self._stop_grace, timeout_s))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._any_running():
            time.sleep(0.05)

    def _stop_watching(self) -> None:
        with self._lock:
            self._closing = True
        self._poke()
        self._thread.join(timeout=10)

    def _live(self, now: float) -> list[R]:
        """The replicas still to watch; drops terminal ones kept past `retain_terminal_s`.
        Called with the lock held."""
        live = []
        for r in list(self._replicas.values()):
            if not r.state.terminal:
                live.append(r)
            elif r.terminal_since is not None and now - r.terminal_since > self._retain:
                del self._replicas[r.replica_id]
        return live

    def _any_running(self) -> bool:
        with self._lock:
            return any(not r.state.terminal for r in self._replicas.values())

    def _poke(self) -> None:
        if not self._loop.is_closed():
            # RuntimeError: the loop just stopped, nothing left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    def _call_in_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        async with httpx.AsyncClient(timeout=self._probe_timeout, trust_env=False) as client:
            while not self._closing:
                try:
                    await self._tick(client)
                except Exception:  # one bad tick must not stop the watching of every replica
                    self._log.exception("%s tick failed", self._kind)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._next_wait())

    def _next_wait(self) -> float:
        # Starting replicas are probed more often: how soon a replica is seen ready is part of
        # every cold start a client waits through.
        with self._lock:
            starting = any(r.state == ReplicaState.STARTING for r in self._replicas.values())
        return min(self._interval, _STARTING_PROBE_S) if starting else self._interval

    def _note_log(self, r: R) -> None:
        """Note how far the replica's log has grown, which times its lines (log_stamps).
        Called with the lock held: a stat and, when it grew, one short append."""
        if r.log_noted is None:
            r.log_noted = log_stamps.last_noted(r.log_path)
        r.log_noted = log_stamps.note_growth(r.log_path, r.log_noted, self._clock())

    async def _probe_health(self, client: httpx.AsyncClient, r: R) -> None:
        try:
            resp = await client.get(f"http://{self._host(r)}:{r.port}{r.health_path}")
        except httpx.HTTPError:
            return
        if resp.status_code == 200:
            with self._lock:
                if r.state == ReplicaState.STARTING:
                    r.state, r.ready_at = ReplicaState.READY, self._clock()
                    self._log.info("replica %s is ready on %s", r.replica_id, self._where(r))

    async def _probe_stats(self, client: httpx.AsyncClient, r: R) -> None:
        path = r.stats_path or STATS_PATH
        try:
            resp = await client.get(f"http://{self._host(r)}:{r.port}{path}")
            stats = parse_stats(path, resp.text) if resp.status_code == 200 else EngineStats()
        except httpx.HTTPError:
            stats = EngineStats()
        with self._lock:
            if r.state == ReplicaState.READY:
                r.running, r.waiting = stats.running, stats.waiting
                r.kv_cache_usage = stats.kv_cache_usage
                r.busy_s, r.uptime_s = stats.busy_s, stats.uptime_s
