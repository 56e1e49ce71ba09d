"""The control loops of one server process and their supervisor.

Each loop is a `run_once()` called by `_supervise`, which logs and counts errors and sleeps an
interval (woken early by `Services.notify()`). A failing pass never kills the loop, and the
gateway keeps serving its last routing snapshot meanwhile.

Several processes may share one database (issue 14): every one serves the API and the gateway
and counts its requests for the metric history; the one holding the leader lease
(`serve/leadership.py`) also runs the reconciler, the autoscaler, the GPU meter, the spending
enforcer and the replica gauges. Elected, it adopts the replicas in the database first; deposed
(or not renewed in time) it stops those loops at once and leaves the replicas running. A process
that does not lead routes from the replica rows the leader writes (`RoutingFeed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter

from modelhost.adapters.files import adapters_root
from modelhost.autoscaler.loop import Autoscaler
from modelhost.directory.metric_labels import DeploymentNames
from modelhost.domain.leader_lease import LeaseTiming
from modelhost.gateway.core import Gateway
from modelhost.orchestrator.backends.base import Backend
from modelhost.orchestrator.ports import SystemClock
from modelhost.orchestrator.reconciler import Reconciler
from modelhost.orchestrator.replica_metrics import ReplicaCollector
from modelhost.orchestrator.store_adapter import SqlDesiredState
from modelhost.orchestrator.types import ReplicaObservation, RestartPolicy
from modelhost.serve.autoscale_glue import AutoscaleGlue, monotonic_now
from modelhost.serve.gpu_meter import GpuMeter
from modelhost.serve.leadership import LeaseWatcher, RoutingFeed
from modelhost.serve.metric_sampler import (
    MetricSampler,
    RequestTally,
    UtilizationCollector,
    cuda_indexes,
)
from modelhost.serve.services import Services
from modelhost.serve.spend_enforcer import SpendEnforcer
from modelhost.store import deployments as store
from modelhost.store.clock import utcnow
from modelhost.store.metering import RequestUsageLog
from modelhost.store.tables import Deployment
from modelhost.store.write_behind import WriteBehind

log = logging.getLogger(__name__)

# A loop that has not completed a pass for this long makes /readyz fail.
STALL_S = 30.0
DEMAND_DEBOUNCE_S = 1.0
# How often requests still held for a cold start re-stamp their deployment's demand.
HELD_DEMAND_S = 2.0
ADOPT_RETRY_S = 2.0
# How often the leader looks for live replica rows its backend does not watch (a row a
# just-deposed leader wrote after this one adopted) and lets the backend sweep its orphans.
ADOPT_SWEEP_S = 5.0


def default_backend(services: Services) -> Backend:
    s = services.settings
    if s.backend == "ray":
        return ray_backend(services)
    from modelhost.orchestrator.backends.local import LocalBackend

    return LocalBackend(
        s.data_dir,
        services.inventory,
        probe_interval_s=s.health_probe_interval_s,
        startup_timeout_s=s.startup_timeout_s,
        stop_grace_s=min(5.0, s.shutdown_grace_s),
    )


def ray_backend(services: Services) -> Backend:
    """Replicas on a Ray cluster (docs/ray.md). The server's inventory becomes the cluster's:
    what the planner places on and `gpu_availability` reports follow its nodes."""
    import os

    from modelhost.orchestrator.backends.ray_backend import RayBackend, RayUnavailable

    s = services.settings
    address = s.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("modelhost cannot start: --backend ray needs --ray-address HOST:PORT")
    try:
        backend = RayBackend(
            s.data_dir,
            address=address,
            namespace=s.ray_namespace,
            cpu_slots=s.cpu_slots,
            probe_interval_s=s.health_probe_interval_s,
            startup_timeout_s=s.startup_timeout_s,
            placement_timeout_s=s.ray_placement_timeout_s,
            stop_grace_s=min(5.0, s.shutdown_grace_s),
        )
    except RayUnavailable as exc:
        raise SystemExit(f"modelhost cannot start: {exc}") from exc
    services.inventory = backend.live_inventory()
    return backend


def adopt_late_rows(reconciler: Reconciler) -> None:
    """One adoption sweep of the leader (blocking). A leader deposed a moment before this one
    won may still write the row of a replica it was starting (its start is shielded so the row
    is written) after this one adopted: that replica runs, and nothing watches it. Live rows
    the backend does not watch are handed to `backend.adopt` (taken back, or closed when their
    replica is gone), which also lets the backend kill what no row names (Ray: the namespace's
    actors unnamed for its grace). The rows are read before the backend's replicas: a replica
    this leader starts is the backend's before its row is written, so it is never mistaken for
    a stranger."""
    records = reconciler.store.replica_records()
    watched = {o.replica_id for o in reconciler.backend.observe()}
    late = [r for r in records if r.replica_id not in watched]
    if late:
        log.warning(
            "replica rows no process watches: %s; adopting them",
            ", ".join(r.replica_id for r in late),
        )
    result = reconciler.backend.adopt(late)
    if result.adopted or result.cleaned:
        reconciler.store.record_adoption(result)


class ControlLoops:
    def __init__(
        self, services: Services, registry: CollectorRegistry, backend: Backend | None
    ) -> None:
        self.services = services
        self.backend = backend or default_backend(services)
        self._gateway: Gateway | None = None
        # Loops every process runs (the lease watcher, the metric history), and the leader's.
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_tasks: list[asyncio.Task[None]] = []
        self._term: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._last_pass: dict[str, float] = {}
        self._last_demand: dict[str, float] = {}
        # The activator's store writes: one thread, batched, retried, flushed at stop().
        self._demand: WriteBehind[str, float] = WriteBehind(
            "scale-from-zero", self._scale_from_zero
        )
        self._errors = Counter(
            "modelhost_loop_errors", "Failed passes of a control loop", ["loop"], registry=registry
        )
        self.reconciler: Reconciler | None = None
        s = services.settings
        self.lease = LeaseWatcher(
            services.db,
            LeaseTiming(s.leader_lease_ttl_s, s.leader_lease_renew_s, s.leader_lease_margin_s),
            self._elected,
            self._deposed,
            take_from_dead_local=s.leader_lease_local_takeover,
        )
        self._routing_feed: RoutingFeed | None = None
        # Metering (issue 12): GPU time from the backend's replicas, tokens from the gateway.
        # The meter reads the backend's own snapshot (what the reconciler's last_observed is
        # taken from, but current, and still holding stopped replicas after backend.close).
        self.gpu_meter = GpuMeter(
            services.db, services.settings, self.backend.observe, registry=registry
        )
        self.request_usage = RequestUsageLog(services.db)
        self.spend_enforcer = SpendEnforcer(
            services.db, services.notify, webhook=services.settings.alert_webhook
        )
        # Metric history (issue 13): the gateway's requests and the replicas' gauges.
        self.request_tally = RequestTally()
        self.metric_sampler = MetricSampler(
            services.db,
            self.request_tally,
            self._leader_observe,
            cuda_indexes(services.inventory),
        )
        # /metrics names each deployment by its owner and `<owner>/<model_name>` too.
        self.deployment_names = DeploymentNames(lambda: services.directory.snapshot)
        registry.register(
            ReplicaCollector(
                lambda: self.reconciler.last_observed if self.reconciler else [],
                self.deployment_names,
            )
        )
        registry.register(UtilizationCollector(self.metric_sampler, self.deployment_names))

    @property
    def leading(self) -> bool:
        """This process runs the leader's loops now."""
        return self.lease.leading

    def _leader_observe(self) -> list[ReplicaObservation] | None:
        # The replica gauges are the leader's to sample (None: another process watches them).
        return self.backend.observe() if self.lease.acting else None

    def attach_gateway(self, gateway: Gateway) -> None:
        self._gateway = gateway
        gateway.usage_sink = self.request_usage.record
        gateway.history_sink = self.request_tally.add
        gateway.deployment_names = self.deployment_names
        self._routing_feed = RoutingFeed(
            self.services.db, gateway.publish, self.services.settings.routing_poll_s
        )

    def _new_reconciler(self, gateway: Gateway) -> Reconciler:
        services, s = self.services, self.services.settings
        return Reconciler(
            backend=self.backend,
            routing=gateway,
            store=SqlDesiredState(
                services.db,
                services.catalog,
                services.secrets,
                adapter_dir=str(adapters_root(s.data_dir)),
                real_gpu_types=frozenset(
                    t for t, _ in services.inventory.types() if not services.inventory.is_virtual(t)
                ),
                vllm_python=str(s.vllm_python) if s.vllm_python else None,
            ),
            inventory=services.inventory,
            clock=SystemClock(),
            policy=RestartPolicy(
                backoff_base_s=s.restart_backoff_base_s,
                backoff_max_s=s.restart_backoff_max_s,
                max_start_failures=s.max_start_failures,
            ),
            drain_timeout_s=s.drain_timeout_s,
            cpu_slots_per_user=s.cpu_slots_per_user,
        )

    async def start(self) -> None:
        """Start the loops. A process that wins the lease at once (a lone server) has adopted
        its replicas and started the leader's loops when this returns."""
        assert self._gateway is not None and self._routing_feed is not None
        s = self.services.settings

        async def history() -> None:
            await asyncio.to_thread(self.metric_sampler.run_once)

        self._tasks.append(self._spawn("metric-history", history, s.metric_sample_interval_s))

        async def demand() -> None:
            self.hold_demand()

        self._tasks.append(self._spawn("held-demand", demand, HELD_DEMAND_S))
        await self.lease.acquire_once()
        if not self.lease.acting:
            self._routing_feed.start()
        self._tasks.append(asyncio.create_task(self.lease.run(), name="leader-lease"))
        term = self._term
        if term is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(term)

    async def _elected(self) -> None:
        assert self._routing_feed is not None
        await self._routing_feed.stop()
        self._term = asyncio.create_task(self._lead(), name="leader-term")

    async def _lead(self) -> None:
        """One term as leader: adopt what the database says runs, then run the loops."""
        assert self._gateway is not None
        s = self.services.settings
        reconciler = self.reconciler = self._new_reconciler(self._gateway)
        while True:
            try:
                await reconciler.adopt()
                break
            except Exception:
                # Nothing starts before the replicas the database lists are adopted or closed.
                self._errors.labels("adopt").inc()
                log.exception("adopting replicas failed; retrying")
                await asyncio.sleep(ADOPT_RETRY_S)
        self._leader_tasks.append(
            self._spawn("reconciler", reconciler.run_once, s.reconcile_interval_s, wake=True)
        )

        async def sweep() -> None:
            await asyncio.to_thread(adopt_late_rows, reconciler)

        self._leader_tasks.append(self._spawn("adopt-sweep", sweep, ADOPT_SWEEP_S))
        glue = AutoscaleGlue(self.services, self._gateway, reconciler)
        autoscaler = Autoscaler(glue, glue, glue)

        async def autoscale() -> None:
            glue.refresh()
            await asyncio.to_thread(autoscaler.run_once, monotonic_now())

        self._leader_tasks.append(self._spawn("autoscaler", autoscale, s.autoscale_interval_s))

        async def meter() -> None:
            await asyncio.to_thread(self.gpu_meter.run_once)

        self._leader_tasks.append(self._spawn("gpu-meter", meter, s.metering_interval_s))

        async def spending() -> None:
            await asyncio.to_thread(self.spend_enforcer.run_once)

        self._leader_tasks.append(self._spawn("spending", spending, s.reconcile_interval_s))

    async def _deposed(self) -> None:
        """Stop the leader's loops now (fencing); the replicas keep running. Routing goes on
        from the database."""
        await self._stop_leading(wait_close=False)
        # A backend that watches replicas another server may now adopt (Ray: its monitor
        # would still poll the actors and apply its placement and start-up timers to them)
        # lets them go; a later term adopts them again from the rows.
        disown: Callable[[], None] | None = getattr(self.backend, "disown", None)
        if disown is not None:
            disown()
        if self._routing_feed is not None:
            self._routing_feed.start()

    async def _stop_leading(self, wait_close: bool = True) -> None:
        tasks = [t for t in (self._term, *self._leader_tasks) if t is not None]
        self._term = None
        self._leader_tasks.clear()
        for task in tasks:
            task.cancel()
        reconciler = self.reconciler
        if reconciler is not None:
            reconciler.abandon_drains()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in ("reconciler", "adopt-sweep", "autoscaler", "gpu-meter", "spending"):
            self._last_pass.pop(name, None)
        if reconciler is not None:
            self.reconciler = None
            # Its store thread may be stuck on a stalled database: the lease watcher must not
            # wait for it when deposed.
            closing = asyncio.ensure_future(asyncio.to_thread(reconciler.close))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            if wait_close:
                await closing

    def _spawn(
        self, name: str, fn: Callable[[], Awaitable[None]], interval: float, wake: bool = False
    ) -> asyncio.Task[None]:
        self._last_pass[name] = time.monotonic()
        return asyncio.create_task(self._supervise(name, fn, interval, wake), name=name)

    async def _supervise(
        self, name: str, fn: Callable[[], Awaitable[None]], interval: float, wake: bool
    ) -> None:
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._errors.labels(name).inc()
                log.exception("%s pass failed", name)
            self._last_pass[name] = time.monotonic()
            if wake:
                await self.services.wait_for_work(interval)
            else:
                await asyncio.sleep(interval)

    def healthy(self) -> bool:
        """Every loop this process runs passes (a follower's: the lease watcher and the
        metric history)."""
        now = time.monotonic()
        watched = self.lease.last_pass
        return (
            bool(self._tasks)
            and not any(t.done() for t in self._tasks)
            and watched is not None
            and now - watched < STALL_S
            and all(now - t < STALL_S for t in self._last_pass.values())
        )

    async def stop(self) -> None:
        """Stop the loops. The leader then stops every replica (draining in-flight work,
        bounded) and gives the lease up, unless `handover_on_shutdown` leaves the replicas to
        the next leader; a follower leaves them alone (they are the leader's)."""
        leading = self.lease.acting
        for task in self._tasks:  # the lease watcher first: nothing is elected any more
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._routing_feed is not None:
            await self._routing_feed.stop()
        s = self.services.settings
        stop_replicas = leading and not s.handover_on_shutdown
        if leading:
            tasks = [t for t in (self._term, *self._leader_tasks) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._term = None
            self._leader_tasks.clear()
            if self.reconciler is not None:
                if stop_replicas:
                    await self.reconciler.wait_drains()
                else:
                    self.reconciler.abandon_drains()
                    await self.reconciler.wait_drains()
        else:
            await self._stop_leading()
        await asyncio.to_thread(self.backend.close, stop_replicas, s.shutdown_grace_s)
        # The final checkpoint: the replicas are stopped now, their exits observed.
        if leading and self._last_pass.get("gpu-meter") is not None:
            try:
                await asyncio.to_thread(self.gpu_meter.run_once)
            except Exception:
                log.exception("the final GPU metering pass failed")
        if self._last_pass.get("metric-history") is not None:
            try:  # what the gateway counted since the last pass; the replicas are gone
                await asyncio.to_thread(self.metric_sampler.run_once, False)
            except Exception:
                log.exception("the final metric history pass failed")
        if self.reconciler is not None:
            await asyncio.to_thread(self.reconciler.close)
        if leading:
            # After the replicas stopped: the next leader does not adopt them half-stopped.
            await asyncio.to_thread(self.lease.release)
        await asyncio.to_thread(self._demand.close)
        await asyncio.to_thread(self.request_usage.close)

    # ---- the activator's hook -------------------------------------------------------------
    def on_demand(self, deploy_id: str) -> None:
        """A request arrived for a deployment with no ready replica: make sure one is wanted.
        Called on the event loop by the gateway; the store write is queued for the activator's
        writer thread (batched, retried while the database is down, flushed at shutdown)."""
        now = time.monotonic()
        if now - self._last_demand.get(deploy_id, 0.0) < DEMAND_DEBOUNCE_S:
            return
        self._last_demand[deploy_id] = now
        self._demand.put(deploy_id, now)

    def hold_demand(self) -> None:
        """Requests still held for a cold start keep their deployment's demand fresh (the
        leader may be another process, which sees them only through `demand_at`)."""
        if self._gateway is None:
            return
        for pool in self._gateway.pools():
            if pool.held > 0:
                self.on_demand(pool.deploy_id)

    def _scale_from_zero(self, batch: Mapping[str, float]) -> None:
        now = utcnow()
        with self.services.db.session() as s:
            for deploy_id in batch:
                dep = s.get(Deployment, deploy_id)
                if dep is None:
                    continue
                dep.demand_at = now
                if dep.desired_state != "running" or dep.desired_replicas > 0:
                    continue
                dep.desired_replicas = 1
                dep.scale_reason = "a request arrived while at zero replicas -> 1 replica"
                store.add_event(s, deploy_id, "scale", dep.scale_reason)
        self.services.notify()
