"""The control loops of one server process and their supervisor.

Each loop is a `run_once()` called by `_supervise`, which logs and counts errors and sleeps an
interval (woken early by `Services.notify()`). A failing pass never kills the loop, and the
gateway keeps serving its last routing snapshot meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter

from modelhost.adapters.files import adapters_root
from modelhost.autoscaler.loop import Autoscaler
from modelhost.directory.metric_labels import DeploymentNames
from modelhost.gateway.core import Gateway
from modelhost.orchestrator.backends.base import Backend
from modelhost.orchestrator.ports import SystemClock
from modelhost.orchestrator.reconciler import Reconciler
from modelhost.orchestrator.replica_metrics import ReplicaCollector
from modelhost.orchestrator.store_adapter import SqlDesiredState
from modelhost.orchestrator.types import RestartPolicy
from modelhost.serve.autoscale_glue import AutoscaleGlue, monotonic_now
from modelhost.serve.gpu_meter import GpuMeter
from modelhost.serve.metric_sampler import (
    MetricSampler,
    RequestTally,
    UtilizationCollector,
    cuda_indexes,
)
from modelhost.serve.services import Services
from modelhost.serve.spend_enforcer import SpendEnforcer
from modelhost.store import deployments as store
from modelhost.store.metering import RequestUsageLog
from modelhost.store.tables import Deployment
from modelhost.store.write_behind import WriteBehind

log = logging.getLogger(__name__)

# A loop that has not completed a pass for this long makes /readyz fail.
STALL_S = 30.0
DEMAND_DEBOUNCE_S = 1.0


def default_backend(services: Services) -> Backend:
    from modelhost.orchestrator.backends.local import LocalBackend

    s = services.settings
    return LocalBackend(
        s.data_dir,
        services.inventory,
        probe_interval_s=s.health_probe_interval_s,
        startup_timeout_s=s.startup_timeout_s,
        stop_grace_s=min(5.0, s.shutdown_grace_s),
    )


class ControlLoops:
    def __init__(
        self, services: Services, registry: CollectorRegistry, backend: Backend | None
    ) -> None:
        self.services = services
        self.backend = backend or default_backend(services)
        self._gateway: Gateway | None = None
        self._tasks: list[asyncio.Task[None]] = []
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
            self.backend.observe,
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

    def attach_gateway(self, gateway: Gateway) -> None:
        services, s = self.services, self.services.settings
        self._gateway = gateway
        gateway.usage_sink = self.request_usage.record
        gateway.history_sink = self.request_tally.add
        gateway.deployment_names = self.deployment_names
        self.reconciler = Reconciler(
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
        assert self.reconciler is not None and self._gateway is not None
        await self.reconciler.adopt()
        s = self.services.settings
        self._spawn("reconciler", self.reconciler.run_once, s.reconcile_interval_s, wake=True)
        glue = AutoscaleGlue(self.services, self._gateway, self.reconciler)
        autoscaler = Autoscaler(glue, glue, glue)

        async def autoscale() -> None:
            glue.refresh()
            await asyncio.to_thread(autoscaler.run_once, monotonic_now())

        self._spawn("autoscaler", autoscale, s.autoscale_interval_s)

        async def meter() -> None:
            await asyncio.to_thread(self.gpu_meter.run_once)

        self._spawn("gpu-meter", meter, s.metering_interval_s)

        async def spending() -> None:
            await asyncio.to_thread(self.spend_enforcer.run_once)

        self._spawn("spending", spending, s.reconcile_interval_s)

        async def history() -> None:
            await asyncio.to_thread(self.metric_sampler.run_once)

        self._spawn("metric-history", history, s.metric_sample_interval_s)

    def _spawn(
        self, name: str, fn: Callable[[], Awaitable[None]], interval: float, wake: bool = False
    ) -> None:
        self._last_pass[name] = time.monotonic()
        self._tasks.append(asyncio.create_task(self._supervise(name, fn, interval, wake)))

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
        now = time.monotonic()
        return bool(self._tasks) and all(now - t < STALL_S for t in self._last_pass.values())

    async def stop(self) -> None:
        """Stop the loops, then every replica (draining in-flight work, bounded)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.reconciler is not None:
            await self.reconciler.wait_drains()
        grace = self.services.settings.shutdown_grace_s
        await asyncio.to_thread(self.backend.close, True, grace)
        # The final checkpoint: the replicas are stopped now, their exits observed.
        if self._last_pass.get("gpu-meter") is not None:
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

    def _scale_from_zero(self, batch: Mapping[str, float]) -> None:
        with self.services.db.session() as s:
            for deploy_id in batch:
                dep = s.get(Deployment, deploy_id)
                if dep is None or dep.desired_state != "running" or dep.desired_replicas > 0:
                    continue
                dep.desired_replicas = 1
                dep.scale_reason = "a request arrived while at zero replicas -> 1 replica"
                store.add_event(s, deploy_id, "scale", dep.scale_reason)
        self.services.notify()
