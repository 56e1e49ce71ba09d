"""The Ray backend: each replica is a detached, named Ray actor that runs its engine on the node
Ray placed it on (orchestrator/backends/ray_actor.py), behind the same `Backend` contract as the
local backend.

- **Start.** `start()` creates the actor `modelhost-replica-<replica_id>` in this server's
  namespace, asking for the replica's GPUs and a sliver of its `accelerator_type:<type>`
  resource (ray_placement), spread over the nodes; it returns at once. The actor spawns the
  engine on its node, bound to the address Ray reports for that node, and answers with host and
  port. A replica Ray cannot place within `placement_timeout_s` fails with the reason.
- **Watching.** A background thread, every `probe_interval_s`: collects the actors' answers,
  polls each actor (the engine's exit status and what its log grew by: the log is mirrored into
  `<data_dir>/logs/<deploy_id>/<replica_id>.log` with its time stamps, which the logs API
  reads, follow included), probes `/health` of starting replicas and `/stats` of ready ones over
  HTTP at the engine's address, and rebuilds the inventory from `ray.nodes()`.
- **Failure.** An engine that exits fails with the reason the local backend would give; an
  actor that dies (its node was lost, or it was killed) fails with "its Ray node died" or "its
  Ray actor died"; the reconciler restarts it where Ray finds room, or reports it pending.
- **Drain and stop.** The actor SIGTERMs the engine's process group and SIGKILLs it after the
  timeout; once the engine's exit is observed the actor is killed. The engine never outlives
  its actor (PR_SET_PDEATHSIG in the engine, the group killed on the actor's exit).
- **Adoption.** The actors are detached: they survive this server. A restarted server finds
  each recorded replica's actor by name, probes it and takes it back; actors of this namespace
  that no record names are killed, so none runs unwatched, but only once they have stayed
  unnamed for `orphan_grace_s` (several servers on one database: a just-deposed leader may
  create an actor and write its row a moment after the new leader adopted; the leader's
  periodic adoption sweep, serve/control.py, then adopts it by that row instead of killing it).
- **Deposed.** A server that stops leading `disown()`s its replicas: it stops watching them
  and can no longer kill or fail them (its timers would otherwise still fire on actors the new
  leader adopted); a later term adopts them again by name.

Ray is imported lazily (the `ray` extra); nothing here runs until a RayBackend is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelhost.domain.replicas import Device, ReplicaState
from modelhost.orchestrator.backends import log_stamps
from modelhost.orchestrator.backends.base import (
    AdoptResult,
    ReplicaHandle,
    ReplicaRecord,
    ReplicaStartSpec,
)
from modelhost.orchestrator.backends.local_process import BACKEND_LINE_PREFIX
from modelhost.orchestrator.backends.ray_placement import (
    ACTOR_PREFIX,
    cluster_devices,
    gpu_type_of,
    gpus_by_type,
    is_loopback,
    replica_resources,
    split_address,
)
from modelhost.orchestrator.backends.watch_loop import (
    HEALTH_PATH,
    STATS_PATH,
    WatchLoop,
    health_status,
    replica_observation,
)
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.runtimes import resolve

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "modelhost"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def keep_loopback_addresses() -> None:
    """Ray swaps a loopback node address (127.0.0.1) for the host's outward one when it starts a
    node or connects a driver (`ray._private.services.resolve_ip_for_localhost`): a cluster
    started with `--node-ip-address=127.0.0.1` then still talks over the outward interface. Keep
    127.0.0.1 as given (other hosts still resolve as Ray does). Scoped to a loopback cluster:
    called only when the address modelhost connects to is loopback."""
    from ray._private import services

    if getattr(services.resolve_ip_for_localhost, "_modelhost_keeps_loopback", False):
        return
    original = services.resolve_ip_for_localhost

    def resolve(host: str) -> str:
        return host if host == "127.0.0.1" else str(original(host))

    resolve._modelhost_keeps_loopback = True  # type: ignore[attr-defined]
    services.resolve_ip_for_localhost = resolve


def connect(address: str, namespace: str) -> bool:
    """Connect this process to the Ray cluster at `address` (a driver). Returns whether this
    call connected (and so should disconnect at close)."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            "the ray backend needs Ray: pip install 'modelhost[ray]' (make install does)"
        ) from exc
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    host, port = split_address(address)
    if port is None:
        raise RayUnavailable(f"the Ray address {address!r} has no port (HOST:PORT)")
    # ray.init retries an unreachable cluster for minutes: say so at once instead.
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from exc
    kwargs: dict[str, Any] = {}
    if is_loopback(host):
        keep_loopback_addresses()
        kwargs["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(
            address=address,
            namespace=namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
            **kwargs,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
    return True


class ClusterInventory(Inventory):
    """An `Inventory` that answers from the Ray backend's latest view of the cluster, so the
    planner, the API's `gpu_availability` and the deploy checks see nodes join and leave
    without being rebuilt (each call reads one immutable snapshot)."""

    def __init__(self, current: Callable[[], Inventory]) -> None:  # no super(): a view
        self._current = current

    def types(self) -> list[tuple[str, int]]:
        return self._current().types()

    def has_type(self, gpu_type: str) -> bool:
        return self._current().has_type(gpu_type)

    def total(self, gpu_type: str) -> int:
        return self._current().total(gpu_type)

    def is_virtual(self, gpu_type: str) -> bool:
        return self._current().is_virtual(gpu_type)

    def device(self, device_id: str) -> Device:
        return self._current().device(device_id)

    def type_of(self, device_id: str) -> str | None:
        return self._current().type_of(device_id)

    def free(self, observed: Iterable[ReplicaObservation]) -> dict[str, list[str]]:
        return self._current().free(observed)

    def available(self, observed: Iterable[ReplicaObservation]) -> dict[str, int]:
        return self._current().available(observed)

    def summary(self) -> Mapping[str, int]:
        return self._current().summary()


@dataclass
class RayReplica:
    """The Ray backend's record of one replica (guarded by the backend's lock)."""

    replica_id: str
    deploy_id: str
    generation: int
    devices: tuple[str, ...]
    log_path: str  # the control plane's mirror of the engine's log
    started_at: float
    placement_deadline: float  # monotonic
    actor: Any = field(default=None, repr=False)
    launch_ref: Any = field(default=None, repr=False)
    poll_ref: Any = field(default=None, repr=False)
    health_path: str = HEALTH_PATH
    stats_path: str | None = STATS_PATH
    state: ReplicaState = ReplicaState.STARTING
    host: str = "127.0.0.1"
    port: int | None = None
    pid: int | None = None
    startup_deadline: float | None = None  # monotonic, once the engine was spawned
    ready_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    fail_reason: str | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    busy_s: float | None = None
    uptime_s: float | None = None
    exit_requested: bool = False
    terminal_since: float | None = None
    remote_log_offset: int = 0
    log_noted: int | None = None
    actor_killed: bool = False

    def observation(self) -> ReplicaObservation:
        return replica_observation(self, self.host)


def actor_death_reason(exc: BaseException) -> str:
    """Why an actor is gone, in words: its node died, or the actor itself did."""
    text = str(exc)
    if "node" in text.lower() and ("died" in text.lower() or "dead" in text.lower()):
        return "its Ray node died (the replica ran there)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"its Ray actor died: {first[:300]}"


class RayBackend(WatchLoop[RayReplica]):
    _kind = "Ray backend"
    _log = log

    def __init__(
        self,
        data_dir: Path,
        *,
        address: str,
        namespace: str = DEFAULT_NAMESPACE,
        cpu_slots: int = 4,
        node_log_dir: str | None = None,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
        startup_timeout_s: float = 900.0,
        placement_timeout_s: float = 120.0,
        stop_grace_s: float = 5.0,
        retain_terminal_s: float = 600.0,
        orphan_grace_s: float = 20.0,
        clock: Callable[[], float] = time.time,
        ray_api: Any = None,
    ) -> None:
        """`ray_api`: the `ray` module, or a fake of the few calls used here (tests); None:
        connect to the cluster at `address`. `orphan_grace_s`: how long an actor of the
        namespace that no replica record names may live before `adopt` kills it."""
        super().__init__(probe_interval_s, probe_timeout_s, stop_grace_s, retain_terminal_s, clock)
        self._data_dir = Path(data_dir)
        self._address = address
        self._namespace = namespace
        self._cpu_slots = cpu_slots
        # Where engines write their logs on the nodes (each node's own disk); default a folder
        # in the node's temp dir.
        self._node_log_dir = node_log_dir
        self._startup_timeout = startup_timeout_s
        self._placement_timeout = placement_timeout_s
        self._orphan_grace = orphan_grace_s
        # Actors of the namespace no record named, by name: when `adopt` first saw them
        # (monotonic). Killed by a later `adopt` once older than the grace and still unnamed.
        self._unrecorded: dict[str, float] = {}
        from modelhost.orchestrator.backends.ray_actor import EngineHost

        if ray_api is None:
            self._connected = connect(address, namespace)
            import ray

            ray_api = ray
        else:
            self._connected = False
        # Ray's API is untyped: held as Any, used through the few calls below.
        self._ray: Any = ray_api
        self._actor_class: Any = self._ray.remote(EngineHost)
        self._totals: dict[str, int] = gpus_by_type(self._ray.nodes())
        self._inventory = self._build_inventory()
        self._start_watching("ray-backend")

    # --- the cluster's devices -----------------------------------------------------------

    def live_inventory(self) -> Inventory:
        """A view that always answers from `inventory()` (ClusterInventory)."""
        return ClusterInventory(self.inventory)

    def inventory(self) -> Inventory:
        """The cluster's GPUs by type (from `ray.nodes()`, refreshed every probe tick) as device
        tokens the planner can place on; the ids live replicas hold stay in it. GPU tokens are
        marked virtual: they name no GPU of this machine (the replica's node assigns CUDA
        indexes), so nothing here reads them as local devices."""
        with self._lock:
            return self._inventory

    def _build_inventory(self) -> Inventory:
        """Called with the lock held (or before the monitor thread starts)."""
        held = [d for r in self._replicas.values() if not r.state.terminal for d in r.devices]
        return Inventory(cluster_devices(self._totals, held, self._cpu_slots, virtual=True))

    # --- Backend API ---------------------------------------------------------------------

    def start(self, spec: ReplicaStartSpec) -> ReplicaHandle:
        with self._lock:
            self._check_open()
            if spec.replica_id in self._replicas:
                raise ValueError(f"replica {spec.replica_id} already exists")
        log_path = self._data_dir / "logs" / spec.deploy_id / f"{spec.replica_id}.log"
        now = self._clock()
        r = RayReplica(
            replica_id=spec.replica_id,
            deploy_id=spec.deploy_id,
            generation=spec.generation,
            devices=spec.devices,
            log_path=str(log_path),
            started_at=now,
            placement_deadline=time.monotonic() + self._placement_timeout,
        )
        node_log = self._node_log_path(spec.deploy_id, spec.replica_id)
        try:
            runtime = resolve(spec.launch.engine)
            r.health_path, r.stats_path = runtime.health_path, runtime.stats_path
            log_path.parent.mkdir(parents=True, exist_ok=True)
            need = replica_resources(spec.devices)
            with open(log_path, "ab") as out:
                out.write(
                    f"{BACKEND_LINE_PREFIX}placing replica {spec.replica_id} on the Ray cluster "
                    f"(generation {spec.generation}, engine {runtime.name}, "
                    f"{need.num_gpus:g} GPU(s) of {gpu_type_of(spec.devices)})\n".encode()
                )
            r.log_noted = log_path.stat().st_size
            actor = self._actor_class.options(
                name=ACTOR_PREFIX + spec.replica_id,
                namespace=self._namespace,
                lifetime="detached",
                max_restarts=0,
                max_concurrency=4,
                scheduling_strategy="SPREAD",
                **need.as_options(),
            ).remote(spec.replica_id, spec.launch, node_log, num_devices=max(len(spec.devices), 1))
            r.actor, r.launch_ref = actor, actor.launch.remote()
        except Exception as exc:  # Ray refuses the actor (bad resources, name taken, ...)
            log.warning("could not start replica %s on Ray: %s", spec.replica_id, exc)
            r.state, r.fail_reason = ReplicaState.FAILED, f"could not start the engine: {exc}"
            r.exited_at, r.terminal_since = self._clock(), time.monotonic()
            with self._lock:
                self._replicas[spec.replica_id] = r
            return ReplicaHandle(spec.replica_id, None)
        with self._lock:
            self._replicas[spec.replica_id] = r
            self._inventory = self._build_inventory()
        self._poke()
        record = ReplicaRecord(
            replica_id=r.replica_id,
            deploy_id=r.deploy_id,
            generation=r.generation,
            pid=0,  # on another node, known once placed; adoption goes by the actor's name
            port=0,
            log_path=r.log_path,
            devices=r.devices,
            proc_start_ticks=0,
            started_at=r.started_at,
        )
        return ReplicaHandle(spec.replica_id, record)

    def adopt(self, records: Sequence[ReplicaRecord]) -> AdoptResult:
        ray = self._ray
        adopted: list[str] = []
        cleaned: list[tuple[str, str]] = []
        recorded = {rec.replica_id for rec in records}
        for rec in sorted(records, key=lambda rec: rec.replica_id):
            with self._lock:
                known = rec.replica_id in self._replicas
            if known:
                adopted.append(rec.replica_id)  # already ours: never a second copy
                continue
            try:
                actor = ray.get_actor(ACTOR_PREFIX + rec.replica_id, namespace=self._namespace)
            except ValueError:
                cleaned.append((rec.replica_id, "its Ray actor is gone"))
                continue
            mirror = Path(rec.log_path)
            offset = mirror.stat().st_size if mirror.exists() else 0
            try:
                where = ray.get(actor.launch_info.remote(), timeout=self._probe_timeout * 5)
                status = ray.get(actor.poll.remote(offset, False), timeout=self._probe_timeout * 5)
            except Exception as exc:  # the actor or its node is gone or unresponsive
                self._kill_actor(actor)
                cleaned.append((rec.replica_id, f"its Ray actor did not answer: {exc}"[:300]))
                continue
            if where is None or status.get("exited"):
                self._kill_actor(actor)
                cleaned.append((rec.replica_id, "its engine is not running"))
                continue
            host, port = str(where["host"]), int(where["port"])
            code = self._call_in_loop(self._health_status(host, port))
            if code is None:
                self._kill_actor(actor)
                cleaned.append((rec.replica_id, "it did not answer its health check"))
                continue
            adopted.append(rec.replica_id)
            state = ReplicaState.READY if code == 200 else ReplicaState.STARTING
            elapsed = max(0.0, self._clock() - rec.started_at)
            r = RayReplica(
                replica_id=rec.replica_id,
                deploy_id=rec.deploy_id,
                generation=rec.generation,
                devices=rec.devices,
                log_path=rec.log_path,
                started_at=rec.started_at,
                placement_deadline=time.monotonic(),
                actor=actor,
                state=state,
                host=host,
                port=port,
                pid=int(where.get("pid") or 0) or None,
                startup_deadline=time.monotonic() + max(0.0, self._startup_timeout - elapsed),
                ready_at=self._clock() if state == ReplicaState.READY else None,
                remote_log_offset=offset,
            )
            with self._lock:
                self._replicas[rec.replica_id] = r
        self._kill_orphans(recorded)
        with self._lock:
            self._inventory = self._build_inventory()
        self._poke()
        return AdoptResult(tuple(adopted), tuple(cleaned))

    def disown(self) -> None:
        """This server no longer leads: stop watching every replica without touching its actor
        or engine (they are the next leader's, which adopts them by name). Without this, the
        monitor thread would still poll them, mirror their logs a second time and apply its
        timers (placement, start-up) to actors another server now watches; a later term adopts
        them afresh from the database's rows."""
        with self._lock:
            # Refs still in flight are dropped with their records; nothing here kills an actor.
            self._replicas.clear()
            self._unrecorded.clear()
            self._inventory = self._build_inventory()

    def close(self, stop_replicas: bool = True, timeout_s: float = 20.0) -> None:
        if self._closing:
            return
        if stop_replicas:
            self._stop_all(timeout_s)
            with self._lock:
                actors = [r.actor for r in self._replicas.values() if not r.actor_killed]
            for actor in actors:
                self._kill_actor(actor)
        self._stop_watching()
        if self._connected:
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # --- internals -----------------------------------------------------------------------

    def _node_log_path(self, deploy_id: str, replica_id: str) -> str:
        if self._node_log_dir:
            root = self._node_log_dir
        else:
            import tempfile

            root = os.path.join(tempfile.gettempdir(), "modelhost-ray", self._namespace)
        return os.path.join(root, deploy_id, f"{replica_id}.log")

    def _kill_actor(self, actor: Any) -> None:
        if actor is None:
            return
        with contextlib.suppress(Exception):
            self._ray.kill(actor, no_restart=True)

    def _kill_orphans(self, recorded: set[str]) -> None:
        """Actors of this namespace that no record names (a server that died between creating
        an actor and recording it) are killed: none may run unwatched. Not at first sight: a
        leader deposed a moment ago may have created one whose row it writes just after this
        server adopted (its start is shielded so the row is written); such an actor is killed
        only if no record names it `orphan_grace_s` after it was first seen, so the next
        adoption sweep (with that row) adopts it instead."""
        try:
            named = self._ray.util.list_named_actors(all_namespaces=True)
        except Exception:
            log.exception("could not list the Ray cluster's actors")
            return
        now = time.monotonic()
        unnamed: set[str] = set()
        for entry in named:
            name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
            ns = entry.get("namespace") if isinstance(entry, dict) else self._namespace
            if ns != self._namespace or not name.startswith(ACTOR_PREFIX):
                continue
            replica_id = name[len(ACTOR_PREFIX) :]
            with self._lock:
                known = replica_id in self._replicas
            if replica_id in recorded or known:
                continue
            unnamed.add(name)
            with self._lock:
                first_seen = self._unrecorded.setdefault(name, now)
            if now - first_seen < self._orphan_grace:
                log.info("Ray actor %s: no replica record names it yet", name)
                continue
            with contextlib.suppress(ValueError):
                log.warning("killing Ray actor %s: no replica record names it", name)
                self._kill_actor(self._ray.get_actor(name, namespace=self._namespace))
        with self._lock:  # forget those gone, recorded or adopted since
            self._unrecorded = {k: v for k, v in self._unrecorded.items() if k in unnamed}

    def _terminate(self, replica_id: str, kill_after_s: float) -> None:
        with self._lock:
            r = self._replicas.get(replica_id)
            if r is None or r.state.terminal:
                return
            r.state, r.exit_requested = ReplicaState.DRAINING, True
            actor, launched = r.actor, r.port is not None
        if actor is None:
            return
        if launched:
            with contextlib.suppress(Exception):
                actor.terminate.remote(max(kill_after_s, 0.0))
        else:
            # Not placed (or not spawned) yet: nothing to drain.
            self._kill_actor(actor)
            with self._lock:
                self._finish(r, None, None, actor_gone=True)
        self._poke()

    async def _tick(self, client: httpx.AsyncClient) -> None:
        self._refresh_totals()
        self._collect_launches()
        self._poll_actors()
        now = time.monotonic()
        probes = []
        with self._lock:
            for r in self._live(now):
                if r.port is None:
                    continue
                if r.state == ReplicaState.STARTING:
                    if r.startup_deadline is not None and now >= r.startup_deadline:
                        r.fail_reason = f"did not become ready within {self._startup_timeout:g} s"
                        self._kill_actor(r.actor)
                        self._finish(r, None, r.fail_reason, actor_gone=True)
                        continue
                    probes.append(self._probe_health(client, r))
                elif r.state == ReplicaState.READY and r.stats_path:
                    probes.append(self._probe_stats(client, r))
        await asyncio.gather(*probes)

    def _refresh_totals(self) -> None:
        try:
            totals = gpus_by_type(self._ray.nodes())
        except Exception:
            log.exception("could not read the Ray cluster's nodes")
            return
        with self._lock:
            if totals != self._totals:
                log.info("Ray cluster GPUs now %s (were %s)", totals, self._totals)
            self._totals = totals
            self._inventory = self._build_inventory()

    def _collect_launches(self) -> None:
        """The actors that were placed and spawned their engine (or could not)."""
        with self._lock:
            waiting = {
                r.launch_ref: r
                for r in self._replicas.values()
                if r.launch_ref is not None and not r.state.terminal
            }
        if not waiting:
            return
        refs = [r.launch_ref for r in waiting.values()]
        done, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        now = time.monotonic()
        for ref in done:
            r = waiting[ref]
            try:
                info = self._ray.get(ref)
            except Exception as exc:
                with self._lock:
                    r.launch_ref = None
                    self._finish(r, None, actor_death_reason(exc), actor_gone=True)
                continue
            with self._lock:
                r.launch_ref = None
                if r.state.terminal or not self._owns(r):
                    continue
                if "error" in info:
                    self._kill_actor(r.actor)
                    self._finish(r, None, str(info["error"]), actor_gone=True)
                    continue
                r.host, r.port, r.pid = str(info["host"]), int(info["port"]), int(info["pid"])
                r.startup_deadline = now + self._startup_timeout
                log.info(
                    "replica %s placed on Ray node %s (%s), engine at %s:%s",
                    r.replica_id,
                    info.get("node_id"),
                    r.host,
                    r.host,
                    r.port,
                )
        with self._lock:
            for r in waiting.values():
                if (
                    r.launch_ref is not None
                    and not r.state.terminal
                    and now >= r.placement_deadline
                    and self._owns(r)
                ):
                    r.launch_ref = None
                    self._kill_actor(r.actor)
                    need = replica_resources(r.devices)
                    self._finish(
                        r,
                        None,
                        f"the Ray cluster could not place the replica within "
                        f"{self._placement_timeout:g} s: it needs {need.num_gpus:g} free "
                        f"{gpu_type_of(r.devices)} GPU(s) on one node",
                        actor_gone=True,
                    )

    def _poll_actors(self) -> None:
        """Ask every placed actor for its engine's state and its log's growth."""
        with self._lock:
            for r in self._replicas.values():
                if r.port is not None and not r.state.terminal and r.poll_ref is None:
                    try:
                        r.poll_ref = r.actor.poll.remote(
                            r.remote_log_offset, r.ready_at is not None
                        )
                    except Exception as exc:
                        self._finish(r, None, actor_death_reason(exc), actor_gone=True)
            pending = {r.poll_ref: r for r in self._replicas.values() if r.poll_ref is not None}
        if not pending:
            return
        refs = [r.poll_ref for r in pending.values()]
        done, _ = self._ray.wait(refs, num_returns=len(refs), timeout=self._probe_timeout / 2)
        for ref in done:
            r = pending[ref]
            try:
                result = self._ray.get(ref)
            except Exception as exc:
                if type(exc).__name__ == "ActorUnavailableError":
                    with self._lock:
                        r.poll_ref = None  # not known dead yet: ask again next tick
                    continue
                with self._lock:
                    r.poll_ref = None
                    if not r.state.terminal:
                        self._finish(r, None, actor_death_reason(exc), actor_gone=True)
                continue
            with self._lock:
                r.poll_ref = None
                if not self._owns(r):
                    continue  # disowned meanwhile: the next leader's
                self._mirror_log(r, result)
                if result.get("exited") and not r.state.terminal:
                    self._kill_actor(r.actor)
                    self._finish(r, result.get("exit_code"), result.get("reason"), True)

    def _owns(self, r: RayReplica) -> bool:
        """`r` is still this backend's (not disowned while a Ray call was out). Lock held."""
        return self._replicas.get(r.replica_id) is r

    def _mirror_log(self, r: RayReplica, result: dict[str, Any]) -> None:
        """Append what the engine's log grew by to the mirror and date it. Lock held."""
        chunk: bytes = result.get("log") or b""
        if not chunk or int(result.get("log_offset", -1)) != r.remote_log_offset:
            return
        try:
            with open(r.log_path, "ab") as out:
                out.write(chunk)
        except OSError:
            return
        r.remote_log_offset += len(chunk)
        self._note_log(r)

    def _finish(
        self, r: RayReplica, code: int | None, reason: str | None, actor_gone: bool
    ) -> None:
        """Record the end of a replica. Called with the lock held."""
        if r.state.terminal:
            return
        r.exit_code, r.exited_at, r.terminal_since = code, self._clock(), time.monotonic()
        r.running = r.waiting = None
        r.actor_killed = r.actor_killed or actor_gone
        if r.exit_requested and (reason is None or r.fail_reason is None):
            r.state = ReplicaState.STOPPED
            note = "stopped"
        else:
            r.state = ReplicaState.FAILED
            r.fail_reason = reason or r.fail_reason or "the replica ended"
            note = f"failed: {r.fail_reason}"
        r.launch_ref = r.poll_ref = None
        self._inventory = self._build_inventory()
        log.info("replica %s %s", r.replica_id, note)
        with contextlib.suppress(OSError), open(r.log_path, "a", encoding="utf-8") as out:
            out.write(f"{BACKEND_LINE_PREFIX}replica {note}\n")
        r.log_noted = log_stamps.note_growth(r.log_path, r.log_noted or 0, self._clock())

    def _host(self, r: RayReplica) -> str:
        return r.host

    def _where(self, r: RayReplica) -> str:
        return f"{r.host}:{r.port}"

    async def _health_status(self, host: str, port: int) -> int | None:
        async with httpx.AsyncClient(timeout=self._probe_timeout, trust_env=False) as client:
            return await health_status(client, host, port)
