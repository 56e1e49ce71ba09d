"""Each replica's own load on modelhost's /metrics: the requests its engine is running and
holding, and its KV cache's use where the engine reports it (vLLM's `/metrics`), read from the
backend's latest observation (the same numbers the autoscaler sees); and how many replicas each
deployment has in each state.

Every series names the deployment by id and by the names `names` gives for it (the owner's
username and `<owner>/<model_name>`, docs/monitoring.md); the names follow from the id, so they
add no series. The older series keep `deploy_id` for the id (as they always had); the newer
ones, `deployment`, like the gateway's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.types import ReplicaObservation

# deploy_id -> (owner username, `<owner>/<model_name>`)
DeploymentNames = Callable[[str], tuple[str, str]]

LABELS = ["deploy_id", "replica_id", "user", "model_name"]
DEPLOYMENT = ["deployment", "model_name", "user"]


def _no_names(_deploy_id: str) -> tuple[str, str]:
    return "", ""


class ReplicaCollector(Collector):
    def __init__(
        self,
        observed: Callable[[], Sequence[ReplicaObservation]],
        names: DeploymentNames = _no_names,
    ) -> None:
        self._observed = observed
        self._names = names

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
        kv_cache_perc = GaugeMetricFamily(
            "modelhost_kv_cache_usage_perc",
            "KV cache in use, 0..1, per replica, where the engine reports it "
            "(vllm:kv_cache_usage_perc, formerly vllm:gpu_cache_usage_perc)",
            labels=[*DEPLOYMENT, "replica_id"],
        )
        replicas = GaugeMetricFamily(
            "modelhost_replicas",
            "Replicas of a deployment by state (starting, ready, draining)",
            labels=[*DEPLOYMENT, "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        for o in self._observed():
            if o.state.terminal:
                continue
            counts[(o.deploy_id, o.state.value)] = counts.get((o.deploy_id, o.state.value), 0) + 1
            counts.setdefault((o.deploy_id, ReplicaState.READY.value), 0)
            if o.state != ReplicaState.READY:
                continue
            user, model_name = self._names(o.deploy_id)
            labels = [o.deploy_id, o.replica_id, user, model_name]
            if o.running is not None:
                running.add_metric(labels, o.running)
            if o.waiting is not None:
                waiting.add_metric(labels, o.waiting)
            if o.kv_cache_usage is not None:
                kv_cache.add_metric(labels, o.kv_cache_usage)
                kv_cache_perc.add_metric(
                    [o.deploy_id, model_name, user, o.replica_id], o.kv_cache_usage
                )
        for (deploy_id, state), n in sorted(counts.items()):
            user, model_name = self._names(deploy_id)
            replicas.add_metric([deploy_id, model_name, user, state], n)
        yield running
        yield waiting
        yield kv_cache
        yield kv_cache_perc
        yield replicas
