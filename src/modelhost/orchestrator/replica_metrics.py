"""Each replica's own load on modelhost's /metrics: the requests its engine is running and
holding, and its KV cache's use where the engine reports it (vLLM's `/metrics`), read from the
backend's latest observation (the same numbers the autoscaler sees)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.types import ReplicaObservation

LABELS = ["deploy_id", "replica_id"]


class ReplicaCollector(Collector):
    def __init__(self, observed: Callable[[], Sequence[ReplicaObservation]]) -> None:
        self._observed = observed

    def collect(self) -> Iterable[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "modelhost_replica_requests_running",
            "Requests the replica's engine is running (its own count)",
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "modelhost_replica_requests_waiting",
            "Requests the replica's engine holds waiting for a batch slot (its own count)",
            labels=LABELS,
        )
        kv_cache = GaugeMetricFamily(
            "modelhost_replica_kv_cache_usage",
            "Fraction of the replica's KV cache in use, where the engine reports it (vLLM)",
            labels=LABELS,
        )
        for o in self._observed():
            if o.state != ReplicaState.READY:
                continue
            labels = [o.deploy_id, o.replica_id]
            if o.running is not None:
                running.add_metric(labels, o.running)
            if o.waiting is not None:
                waiting.add_metric(labels, o.waiting)
            if o.kv_cache_usage is not None:
                kv_cache.add_metric(labels, o.kv_cache_usage)
        yield running
        yield waiting
        yield kv_cache
