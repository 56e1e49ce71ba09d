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
    registry.register(ReplicaCollector(lambda: observed, lambda _id: ("alice", "alice/m1")))
    text = generate_latest(registry).decode()
    # prometheus_client writes labels sorted by name.
    names = 'model_name="alice/m1"'
    r1 = f'deploy_id="dep1",{names},replica_id="r1",user="alice"'
    r2 = f'deploy_id="dep1",{names},replica_id="r2",user="alice"'
    assert f"modelhost_replica_requests_running{{{r1}}} 3.0" in text
    assert f"modelhost_replica_requests_waiting{{{r1}}} 1.0" in text
    assert f"modelhost_replica_kv_cache_usage{{{r1}}} 0.5" in text
    assert f"modelhost_replica_requests_running{{{r2}}} 0.0" in text
    assert 'replica_id="r3"' not in text
    assert f"modelhost_replica_kv_cache_usage{{{r2}}}" not in text
    # vLLM's name for the same figure, and the replicas by state.
    dep = f'deployment="dep1",{names}'
    assert f'modelhost_kv_cache_usage_perc{{{dep},replica_id="r1",user="alice"}} 0.5' in text
    assert f'modelhost_replicas{{{dep},state="ready",user="alice"}} 2.0' in text
    assert f'modelhost_replicas{{{dep},state="starting",user="alice"}} 1.0' in text


def test_without_names_the_labels_are_empty() -> None:
    registry = CollectorRegistry()
    registry.register(ReplicaCollector(lambda: [obs("r1", ReplicaState.READY, running=1)]))
    text = generate_latest(registry).decode()
    line = 'deploy_id="dep1",model_name="",replica_id="r1",user=""'
    assert f"modelhost_replica_requests_running{{{line}}} 1.0" in text
