"""The Grafana dashboard in deploy/grafana/ draws the console's six health charts from series
the server really exposes: every metric its queries name is scraped from a live app's /metrics
after traffic, with the owner and `<owner>/<model_name>` labels the `$deployment` variable
selects on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.serve.app import create_app
from tests.component._live_server import serve_app
from tests.component.inprocess_engines import InProcessBackend
from tests.conftest import ADMIN_TOKEN, auth, make_settings, wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "modelhost.json"
PANELS = {
    "Requests per second",
    "Generated tokens per second",
    "Inference time p50 / p95",
    "Queue time",
    "Replicas",
    "GPU utilisation",
}
METRIC = re.compile(r"\bmodelhost_[a-z0-9_]+")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _queries(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    variables = dash["templating"]["list"]
    return exprs + [v["definition"] for v in variables if v["type"] == "query"]


def test_the_dashboard_is_grafana_json_with_the_six_panels() -> None:
    dash = _dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["uid"] and dash["title"]
    assert {p["title"] for p in dash["panels"]} == PANELS
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["deployment"]["type"] == "query"
    assert "model_name" in variables["deployment"]["definition"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    for p in dash["panels"]:
        assert p["type"] == "timeseries" and set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["refId"]
            assert 'model_name=~"$deployment"' in t["expr"], t["expr"]


class _BusyBackend(InProcessBackend):
    """In-process replicas with an engine busy clock (the real engines report it on /stats):
    busy half the time."""

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.monotonic()

    def observe(self) -> list[ReplicaObservation]:
        uptime = time.monotonic() - self._t0
        return [
            replace(o, busy_s=uptime / 2, uptime_s=uptime) if o.state == ReplicaState.READY else o
            for o in super().observe()
        ]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    settings = make_settings(tmp_path / "data", metric_sample_interval_s=0.2)
    app = create_app(settings, backend=_BusyBackend())
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _samples(client: httpx.Client) -> dict[str, list[dict[str, str]]]:
    r = client.get("/metrics", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append(dict(s.labels))
    return out


def test_every_series_the_dashboard_queries_is_exposed(client: httpx.Client) -> None:
    r = client.post("/v1/users", json={"username": "alice"}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    alice = r.json()["token"]
    body = {
        "model_name": "m1",
        "gpu": "CPU",
        "engine": "simulator",
        "max_batch_size": 4,
        "settings": {"min_instances": 1, "max_instances": 1},
    }
    r = client.post("/deploy/llm", json=body, headers=auth(alice))
    assert r.status_code == 201, r.text
    deploy_id = r.json()["deploy_id"]
    wait_until(
        lambda: client.get(f"/deploy/{deploy_id}", headers=auth(alice)).json()["status"] == "ready",
        timeout=30,
        what="ready",
    )
    chat = {"model": "alice/m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for _ in range(3):
        r = client.post("/v1/chat/completions", json=chat, headers=auth(alice))
        assert r.status_code == 200, r.text
    # Refused before it reached a replica: counted with the deployment's names too.
    r = client.post("/v1/chat/completions", json={**chat, "messages": 7}, headers=auth(alice))
    assert r.status_code == 400, r.text

    names = {"deployment": deploy_id, "model_name": "alice/m1", "user": "alice"}

    def labelled(samples: dict[str, list[dict[str, str]]], name: str) -> bool:
        return any(names.items() <= labels.items() for labels in samples.get(name, []))

    used = sorted({m for q in _queries(_dashboard()) for m in METRIC.findall(q)})
    assert "modelhost_replica_busy_ratio" in used

    # The busy ratio needs two sampler passes over a ready replica.
    def with_busy_ratio() -> dict[str, list[dict[str, str]]] | None:
        s = _samples(client)
        return s if labelled(s, "modelhost_replica_busy_ratio") else None

    samples: dict[str, list[dict[str, str]]] = wait_until(
        with_busy_ratio, timeout=15, what="the busy ratio"
    )
    missing = [m for m in used if not labelled(samples, m)]
    assert not missing, f"the dashboard queries series /metrics lacks: {missing}"
    busy = next(s for s in samples["modelhost_replica_busy_ratio"] if s["model_name"] == "alice/m1")
    assert busy["source"] == "engine_busy"
    for status in ("200", "400"):
        want = {**names, "status": status}
        assert any(want.items() <= labels.items() for labels in samples["modelhost_requests_total"])
    # vLLM's names for the same quantities (docs/monitoring.md), and the older names.
    for name in (
        "modelhost_num_requests_running",
        "modelhost_num_requests_waiting",
        "modelhost_e2e_request_latency_seconds_count",
        "modelhost_prompt_tokens_total",
        "modelhost_in_flight",
        "modelhost_queue_wait_seconds_count",
        "modelhost_request_seconds_count",
    ):
        assert labelled(samples, name), name
    # The metering series keep the caller in `user` and add the deployment's name.
    caller = {"user": "alice", "deployment": deploy_id, "model_name": "alice/m1", "adapter": ""}
    tokens = samples["modelhost_tokens_total"]
    assert any(caller.items() <= labels.items() for labels in tokens)
