"""The gateway's state: one admission pool per deployment, the upstream HTTP client, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelhost.config import Settings
from modelhost.directory.metric_labels import UNKNOWN, Names, names_of
from modelhost.domain.money import MICROS_PER_USD
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.gateway.adapter_residency import ReplicaAdmin
from modelhost.gateway.drain import Drain
from modelhost.gateway.limits import Limits, MemoryRateCounter, MemorySpendLedger
from modelhost.gateway.pool import DeploymentPool, PoolLimits
from modelhost.gateway.proxy import ForwardResult
from modelhost.gateway.resolve import Target
from modelhost.gateway.upstream import UpstreamClient
from modelhost.gateway.usage_meter import token_cost
from modelhost.store.clock import utcnow
from modelhost.store.metering import RequestTokens
from modelhost.store.users import Principal

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# Every per-deployment series: the id (kept for compatibility), `<owner>/<model_name>` (vLLM's
# `model_name`) and the owner. Names follow from the id: they add no series (docs/monitoring.md).
DEPLOYMENT = ["deployment", "user", "model_name"]  # user, model_name: names_of()


@dataclass(frozen=True)
class GatewaySignals:
    in_flight: int
    queued: int
    held: int
    last_request_at: float | None  # monotonic seconds


class Gateway:
    def __init__(
        self,
        settings: Settings,
        on_demand: Callable[[str], None],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self._on_demand = on_demand
        self._pools: dict[str, DeploymentPool] = {}
        # Where each request's tokens go (store.metering.RequestUsageLog.record, set by the
        # server's wiring): it must only queue, never wait on the database.
        self.usage_sink: Callable[[RequestTokens], None] | None = None
        # Where each forwarded request goes for the metric history (serve/metric_sampler.py
        # RequestTally.add, set by the wiring): it must only count in memory.
        self.history_sink: Callable[[Target, ForwardResult], None] | None = None
        # deploy_id -> (owner, `<owner>/<model_name>`) for the series that only know the id
        # (directory/metric_labels.py DeploymentNames, set by the wiring).
        self.deployment_names: Callable[[str], Names] = lambda _id: UNKNOWN
        self.drain = Drain()
        # Spending and rate limits (gateway/limits.py): in this process unless the server's
        # wiring swaps in the Redis-backed counters (MODELHOST_REDIS_URL).
        self.caller_limits = Limits(MemoryRateCounter(), MemorySpendLedger())
        # Inference requests to replicas.
        self.upstream = UpstreamClient(settings.request_timeout_s)
        # Everything else (LoRAX /info): rare, not worth a second code path.
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        # Adapter loads on engines that do not load them themselves (vLLM); the folders are
        # where the control plane writes them (adapters/files.py `adapters_root`).
        self.admin = ReplicaAdmin(
            self.client, settings.data_dir / "adapters", settings.request_timeout_s
        )
        self.requests = Counter(
            "modelhost_requests",
            "Inference requests by deployment and HTTP status",
            [*DEPLOYMENT, "status"],
            registry=registry,
        )
        self.adapter_requests = Counter(
            "modelhost_adapter_requests",
            "Inference requests per LoRA adapter",
            [*DEPLOYMENT, "adapter"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelhost_request_seconds",
            "Time to the first byte of the answer (the whole answer when not streaming)",
            DEPLOYMENT,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "modelhost_queue_wait_seconds",
            "Time requests waited in the gateway for a replica slot",
            DEPLOYMENT,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cold_first_token = Histogram(
            "modelhost_cold_start_first_token_seconds",
            "First-byte latency of requests that arrived while no replica was ready",
            DEPLOYMENT,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # What callers used and pay, per user (the caller), deployment and adapter ("" for
        # none). The books are request_usage's integer micros; the float is for display only.
        self.tokens = Counter(
            "modelhost_tokens",
            "Tokens of metered inference requests by caller, deployment, adapter and kind",
            ["user", "deployment", "model_name", "adapter", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "modelhost_cost_usd",
            "What callers are charged for tokens (USD; display only, the books are in micros)",
            ["user", "deployment", "model_name", "adapter", "kind"],
            registry=registry,
        )
        # vLLM's per-request series under modelhost_ names (docs/monitoring.md), measured at
        # the gateway, per deployment (and adapter for tokens: "" for the base model).
        self.e2e_latency = Histogram(
            "modelhost_e2e_request_latency_seconds",
            "Arrival at the gateway to the answer's last byte (vllm:e2e_request_latency_seconds)",
            DEPLOYMENT,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_time = Histogram(
            "modelhost_request_inference_time_seconds",
            "End-to-end time less the gateway queue wait (vllm:request_inference_time_seconds)",
            DEPLOYMENT,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_time = Histogram(
            "modelhost_request_queue_time_seconds",
            "Time waiting in the gateway for a replica slot (vllm:request_queue_time_seconds)",
            DEPLOYMENT,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "modelhost_generation_tokens",
            "Generated tokens, as the engine counted them (vllm:generation_tokens_total)",
            [*DEPLOYMENT, "adapter"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "modelhost_prompt_tokens",
            "Prompt tokens, as the engine counted them (vllm:prompt_tokens_total)",
            [*DEPLOYMENT, "adapter"],
            registry=registry,
        )
        registry.register(_PoolCollector(self))

    def limits(self) -> PoolLimits:
        s = self.settings
        return PoolLimits(
            queue_factor=s.queue_factor,
            queue_min=s.queue_min,
            queue_timeout_s=s.request_timeout_s,
            cold_start_timeout_s=s.cold_start_timeout_s,
        )

    def pool(self, deploy_id: str) -> DeploymentPool:
        pool = self._pools.get(deploy_id)
        if pool is None:
            pool = DeploymentPool(deploy_id, self.limits(), self._on_demand)
            self._pools[deploy_id] = pool
        return pool

    def pools(self) -> Iterable[DeploymentPool]:
        return self._pools.values()

    def publish(self, table: Mapping[str, Sequence[ReplicaEndpoint]]) -> None:
        """Install a new routing snapshot (from the reconciler). Deployments missing from it
        have no routable replica; the gateway keeps serving the last snapshot if the control
        loops stall."""
        for deploy_id in set(self._pools) | set(table):
            self.pool(deploy_id).update(table.get(deploy_id, ()))

    def signals(self, deploy_id: str) -> GatewaySignals:
        pool = self._pools.get(deploy_id)
        if pool is None:
            return GatewaySignals(0, 0, 0, None)
        return GatewaySignals(pool.in_flight, pool.queued, pool.held, pool.last_request_at)

    def outstanding_on(self, deploy_id: str, replica_id: str) -> int:
        pool = self._pools.get(deploy_id)
        return pool.outstanding_on(replica_id) if pool else 0

    def record(
        self,
        target: Target,
        result: ForwardResult,
        who: Principal | None = None,
        request_id: str | None = None,
    ) -> int:
        """Count the request in the metrics and meter its tokens; return what the caller
        pays for them (micros)."""
        dep = (target.deploy_id, *names_of(target.full_name))
        cost = 0
        if result.tokens is not None and who is not None and request_id is not None:
            cost = self._meter(target, result, who, request_id)
        self.requests.labels(*dep, str(result.status)).inc()
        if target.adapter_name:
            self.adapter_requests.labels(*dep, target.adapter_name).inc()
        if result.first_byte_s is not None:
            self.latency.labels(*dep).observe(result.first_byte_s)
            if result.cold:
                self.cold_first_token.labels(*dep).observe(result.first_byte_s)
        self.queue_wait.labels(*dep).observe(result.queued_s)
        self.queue_time.labels(*dep).observe(result.queued_s)
        if result.total_s is not None:
            self.e2e_latency.labels(*dep).observe(result.total_s)
            self.inference_time.labels(*dep).observe(max(result.total_s - result.queued_s, 0.0))
        if result.tokens is not None:
            adapter = target.adapter_name or ""
            self.generation_tokens.labels(*dep, adapter).inc(max(result.tokens.completion, 0))
            self.prompt_tokens.labels(*dep, adapter).inc(max(result.tokens.prompt, 0))
        if self.history_sink is not None:
            self.history_sink(target, result)
        return cost

    def _meter(self, target: Target, result: ForwardResult, who: Principal, request_id: str) -> int:
        sink, tokens = self.usage_sink, result.tokens
        if sink is None or tokens is None:
            return 0
        cost = token_cost(tokens, who.user_id, target.owner_id, target.pricing)
        sink(
            RequestTokens(
                request_id=request_id,
                at=utcnow(),
                user_id=who.user_id,
                api_token_id=who.token_id or None,
                deploy_id=target.deploy_id,
                adapter_id=target.adapter_id,
                prompt_tokens=tokens.prompt,
                completion_tokens=tokens.completion,
                cost_micros=cost,
            )
        )
        labels = (who.username, target.deploy_id, target.full_name, target.adapter_name or "")
        self.tokens.labels(*labels, "prompt").inc(tokens.prompt)
        self.tokens.labels(*labels, "completion").inc(tokens.completion)
        self.cost.labels(*labels, "tokens").inc(cost / MICROS_PER_USD)
        return cost

    def record_rejected(self, deploy_id: str, status: int) -> None:
        self.requests.labels(deploy_id, *self.deployment_names(deploy_id), str(status)).inc()

    async def close(self) -> None:
        await self.upstream.aclose()
        await self.client.aclose()


class _PoolCollector(Collector):
    """Live queue gauges, read at scrape time rather than updated on every request."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    def collect(self) -> Iterable[GaugeMetricFamily]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=DEPLOYMENT)

        in_flight = gauge("modelhost_in_flight", "Requests running on replicas")
        queued = gauge("modelhost_queued", "Requests waiting for a replica slot")
        held = gauge("modelhost_held_cold", "Requests held for a cold start")
        idle = gauge("modelhost_idle_seconds", "Seconds since the last request")
        running = gauge(
            "modelhost_num_requests_running",
            "Requests the gateway has on the deployment's replicas (vllm:num_requests_running)",
        )
        waiting = gauge(
            "modelhost_num_requests_waiting",
            "Requests waiting in the gateway: queued or held for a cold start "
            "(vllm:num_requests_waiting)",
        )
        now = time.monotonic()
        for pool in self._gw.pools():
            labels = [pool.deploy_id, *self._gw.deployment_names(pool.deploy_id)]
            in_flight.add_metric(labels, pool.in_flight)
            queued.add_metric(labels, pool.queued)
            held.add_metric(labels, pool.held)
            running.add_metric(labels, pool.in_flight)
            waiting.add_metric(labels, pool.queued + pool.held)
            if pool.last_request_at is not None:
                idle.add_metric(labels, now - pool.last_request_at)
        return [in_flight, queued, held, idle, running, waiting]
