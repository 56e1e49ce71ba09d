"""Replicas' own load on modelhost's /metrics, from the backend's observations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.replica_metrics import ReplicaCollector
from modelhost.orchestrator.types import ReplicaObservation


def obs(replica: str, state: ReplicaState, **kw: object) -> ReplicaObservation:
    return ReplicaObservation(replica, "dep1", 1, state, 8000, 1, ("cpu#0",), 0.0, **kw)  # type: ignore[arg-type]


def test_ready_replicas_report_what_their_engine_said() -> None:
    observed = [
        obs("r1", ReplicaState.READY, running=3, waiting=1, kv_cache_usage=0.5),
        obs("r2", ReplicaState.READY, running=0, waiting=0),  # an engine without a KV figure
        obs("r3", ReplicaState.STARTING, running=9),  # not serving: not reported
    ]
    registry = CollectorRegistry()
    registry.register(ReplicaCollector(lambda: observed))
    text = generate_latest(registry).decode()
    assert 'modelhost_replica_requests_running{deploy_id="dep1",replica_id="r1"} 3.0' in text
    assert 'modelhost_replica_requests_waiting{deploy_id="dep1",replica_id="r1"} 1.0' in text
    assert 'modelhost_replica_kv_cache_usage{deploy_id="dep1",replica_id="r1"} 0.5' in text
    assert 'modelhost_replica_requests_running{deploy_id="dep1",replica_id="r2"} 0.0' in text
    assert 'replica_id="r3"' not in text
    assert 'modelhost_replica_kv_cache_usage{deploy_id="dep1",replica_id="r2"}' not in text
