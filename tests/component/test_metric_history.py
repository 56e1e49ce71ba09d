"""Metric history: the store (downsampling into tiers, retention, windows) and the sampler
(replica gauges, GPU utilisation from NVML or the engine's busy clock) with an injected clock,
and GET /v1/deployments/{id}/metrics through the whole app, tenancy included."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from modelhost.config import Settings
from modelhost.domain import metric_history as mh
from modelhost.domain.replicas import ReplicaState
from modelhost.orchestrator.inventory import GpuInfo, Inventory
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.serve.metric_sampler import MetricSampler, RequestTally, cuda_indexes
from modelhost.store import metric_history as store
from modelhost.store.db import Database
from modelhost.store.tables import MetricHistory
from tests.component.conftest import Api
from tests.conftest import ADMIN_TOKEN, auth, make_settings, wait_until
from tests.metering_helpers import obs

T0 = 1_767_268_800  # 2026-01-01T12:00:00Z, a multiple of every resolution used here


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    database.migrate()
    yield database
    database.close()


def _rows(db: Database, resolution_s: int) -> list[MetricHistory]:
    with db.session() as s:
        q = (
            select(MetricHistory)
            .where(MetricHistory.resolution_s == resolution_s)
            .order_by(MetricHistory.bucket_start, MetricHistory.adapter_id)
        )
        return list(s.scalars(q))


def _req(inference_s: float, tokens: int = 10) -> mh.Aggregate:
    return mh.request(tokens=tokens, inference_s=inference_s, queue_s=0.1)


def test_points_land_in_every_tier_and_add_up(db: Database) -> None:
    with db.session() as s:
        # Two requests 10 s apart, and the same bucket written twice (two passes/processes).
        store.add(s, {("d1", "", T0): _req(0.2), ("d1", "", T0 + 10): _req(0.4)})
    with db.session() as s:
        store.add(s, {("d1", "", T0 + 10): _req(0.4), ("d1", "a1", T0 + 70): _req(1.0)})
    fine = _rows(db, 10)
    assert [(r.adapter_id, r.bucket_start, r.requests) for r in fine] == [
        ("", T0, 1),
        ("", T0 + 10, 2),
        ("a1", T0 + 70, 1),
    ]
    coarse = _rows(db, 60)
    assert [(r.adapter_id, r.bucket_start, r.requests, r.tokens) for r in coarse] == [
        ("", T0, 3, 30),
        ("a1", T0 + 60, 1, 10),
    ]
    assert coarse[0].queue_count == 3 and coarse[0].queue_sum_s == pytest.approx(0.3)
    hist = {int(k): v for k, v in coarse[0].inference_hist.items()}
    assert hist == {mh.latency_bucket(0.2): 1, mh.latency_bucket(0.4): 2}


def test_retention_drops_each_tier_after_its_time(db: Database) -> None:
    with db.session() as s:
        store.add(s, {("d1", "", T0 + i * 600): _req(0.1) for i in range(0, 48)})  # 8 h
    now = T0 + 8 * 3600
    with db.session() as s:
        store.expire(s, now)
    fine = _rows(db, 10)
    # The 10 s tier keeps 6 h; the 1 min tier keeps all of it.
    assert min(r.bucket_start for r in fine) >= now - 6 * 3600
    assert len(fine) == 36 and len(_rows(db, 60)) == 48
    with db.session() as s:
        store.expire(s, T0 + 7 * 86_400 + 3600)  # a week on: an hour of minutes is gone
    assert min(r.bucket_start for r in _rows(db, 60)) >= T0 + 3600
    assert _rows(db, 10) == []


def test_windows_read_their_tier_at_their_resolution(db: Database) -> None:
    # One request every 10 s for 7 hours, 2 tokens each: 0.1 req/s and 0.2 tokens/s anywhere.
    points = {("d1", "", T0 + i * 10): _req(0.3, tokens=2) for i in range(7 * 360)}
    with db.session() as s:
        store.add(s, points)
    now = T0 + 7 * 3600 + 5
    for window, res, points_expected in (("1h", 10, 360), ("24h", 120, 720), ("7d", 900, 672)):
        plan = mh.plan(mh.WINDOWS[window], now, lag_s=11)
        with db.session() as s:
            buckets = store.read(s, "d1", "", plan)
        out = mh.series(buckets, plan)
        assert plan.resolution_s == res
        assert len(out["requests_per_s"]) == points_expected
        known = [(t, v) for t, v in out["requests_per_s"] if v is not None]
        assert known and all(v == pytest.approx(0.1) for _, v in known[:-1])
        assert all(v == pytest.approx(0.2) for _, v in out["tokens_per_s"][-5:-1])
        # Before the first sample: unobserved, so null rather than 0.
        if window != "1h":
            assert out["requests_per_s"][0][1] is None
        p50 = [v for _, v in out["inference_time_p50_s"] if v is not None]
        assert p50 and all(0.25 < v <= 0.3 for v in p50)
    # The 1h window ends at the last complete bucket, 11 s of lag before now.
    last = mh.plan(3600, now, lag_s=11)
    assert last.end == T0 + 7 * 3600 - 10


def _obs(
    rid: str,
    deploy_id: str,
    devices: tuple[str, ...],
    busy: tuple[float, float] | None = None,
    state: ReplicaState = ReplicaState.READY,
) -> ReplicaObservation:
    return obs(rid, T0 - 100, state, devices=devices, deploy_id=deploy_id, busy=busy)


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_sampler_writes_replicas_and_gpu_utilisation_by_source(db: Database) -> None:
    inventory = Inventory.build(
        [GpuInfo(0, "NVIDIA H100 80GB HBM3", 81_559), GpuInfo(1, "NVIDIA H100 80GB HBM3", 81_559)],
        virtual_spec="A100-80GB:2",
        cpu_slots=2,
    )
    clock = _Clock(T0 + 1)
    observed: list[ReplicaObservation] = []
    nvml_calls: list[float] = []
    nvml_values: dict[int, float] = {0: 40.0, 1: 80.0}

    def nvml() -> dict[int, float]:
        nvml_calls.append(clock.t)
        return dict(nvml_values)

    sampler = MetricSampler(
        db,
        RequestTally(clock),
        lambda: observed,
        cuda_indexes(inventory),
        gpu_util=nvml,
        clock=clock,
    )
    observed[:] = [
        _obs("r1", "real", ("cuda#0", "cuda#1")),  # two real GPUs: NVML, averaged
        _obs("r2", "cpu", ("cpu#0",), busy=(10.0, 100.0)),  # CPU: the engine's busy clock
        _obs("r3", "virt", ("A100-80GB#0",)),  # no busy clock: unknown
        _obs("r4", "cpu", ("cpu#1",), state=ReplicaState.STARTING),  # not ready: not counted
    ]
    sampler.run_once()
    clock.t = T0 + 11
    observed[1] = _obs("r2", "cpu", ("cpu#0",), busy=(15.0, 110.0))  # busy 5 of 10 s
    sampler.run_once()
    rows = {(r.deploy_id, r.bucket_start): r for r in _rows(db, 10)}
    real = rows[("real", T0)]
    assert (real.replicas_sum, real.replica_samples) == (1.0, 1)
    assert (real.gpu_util_sum, real.gpu_util_samples, real.gpu_source) == (0.6, 1, "nvml")
    # The CPU replica's first pass has no earlier reading: unknown, not 0.
    first, second = rows[("cpu", T0)], rows[("cpu", T0 + 10)]
    assert (first.replicas_sum, first.gpu_util_samples, first.gpu_source) == (1.0, 0, None)
    assert (second.gpu_util_sum, second.gpu_util_samples) == (0.5, 1)
    assert second.gpu_source == "engine_busy"
    assert rows[("virt", T0 + 10)].gpu_util_samples == 0
    assert len(nvml_calls) == 2
    # nvidia-smi failing is unknown too; a sample with no real GPU does not call it.
    nvml_values.clear()
    clock.t = T0 + 21
    sampler.run_once()
    assert _rows_for(db, "real", T0 + 20).gpu_util_samples == 0
    observed[:] = [observed[1]]
    clock.t = T0 + 31
    sampler.run_once()
    assert len(nvml_calls) == 3


def _rows_for(db: Database, deploy_id: str, bucket: int) -> MetricHistory:
    rows = [r for r in _rows(db, 10) if r.deploy_id == deploy_id and r.bucket_start == bucket]
    assert len(rows) == 1
    return rows[0]


class _FlakyDb:
    """A database whose next session fails, then works."""

    def __init__(self, db: Database) -> None:
        self.db, self.fail = db, True

    def session(self) -> Any:
        if self.fail:
            self.fail = False
            raise ConnectionError("database down")
        return self.db.session()


def test_a_failed_pass_keeps_the_requests_for_the_next(db: Database) -> None:
    from modelhost.gateway.proxy import ForwardResult
    from modelhost.gateway.resolve import Target

    clock = _Clock(T0 + 1)
    tally = RequestTally(clock)
    flaky = _FlakyDb(db)
    sampler = MetricSampler(flaky, tally, lambda: None, lambda _: None, clock=clock)  # type: ignore[arg-type]
    target = Target("d1", "alice/m", "ready", "running", None)
    tally.add(target, ForwardResult(status=200, queued_s=0.0, total_s=0.1))
    with pytest.raises(ConnectionError):
        sampler.run_once()
    tally.add(target, ForwardResult(status=200, queued_s=0.0, total_s=0.1))
    sampler.run_once()
    assert [(r.bucket_start, r.requests, r.replica_samples) for r in _rows(db, 10)] == [
        (T0, 2, 0)  # observe() said another process watches the replicas: no gauges
    ]


# ---- the route, through the whole app ---------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", metric_sample_interval_s=0.2)


def _metrics(api: Api, token: str, deploy_id: str, **params: str) -> Any:
    return api.client.get(
        f"/v1/deployments/{deploy_id}/metrics", params=params, headers=auth(token)
    )


def _count(db: Database, deploy_id: str) -> int:
    with db.session() as s:
        q = select(func.coalesce(func.sum(MetricHistory.requests), 0)).where(
            MetricHistory.deploy_id == deploy_id,
            MetricHistory.resolution_s == 10,
            MetricHistory.adapter_id == "",
        )
        return int(s.scalar(q) or 0)


def test_metrics_route_serves_the_owner_and_admins_only(api: Api) -> None:
    app: Any = api.client.app
    db: Database = app.state.services.db
    alice, bob = api.new_user("alice", gpu_limit=1), api.new_user("bob", gpu_limit=1)
    deploy_id = api.create_simulator(alice)
    wait_until(
        lambda: (
            api.client.get(f"/deploy/{deploy_id}", headers=auth(alice)).json()["status"] == "ready"
        ),
        timeout=30,
        what="ready",
    )
    chat = {"model": "alice/m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for _ in range(3):
        r = api.client.post("/v1/chat/completions", json=chat, headers=auth(alice))
        assert r.status_code == 200, r.text
    # The sampler loop writes what the gateway counted, and the ready replica.
    wait_until(lambda: _count(db, deploy_id) == 3, timeout=10, what="requests in the history")
    with db.session() as s:
        replicas = s.scalar(
            select(func.max(MetricHistory.replicas_sum / MetricHistory.replica_samples)).where(
                MetricHistory.deploy_id == deploy_id, MetricHistory.replica_samples > 0
            )
        )
    assert replicas is not None and 0 < replicas <= 1.0  # 0 until it was ready in its bucket
    # Earlier buckets (complete, so shown): written straight to the store.
    now = time.time()
    past = mh.align(now, 10) - 120
    with db.session() as s:
        store.add(
            s,
            {
                (deploy_id, "", past): _req(0.5, tokens=40).merge(
                    mh.gauges(replicas=2, gpu_util=0.25, gpu_source="engine_busy")
                )
            },
        )

    r = _metrics(api, alice, deploy_id, window="1h")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deploy_id"] == deploy_id and body["window"] == "1h"
    assert body["resolution_s"] == 10 and body["end"] - body["start"] == 3600
    assert set(body["series"]) == set(mh.SERIES)
    assert body["gpu_utilization_source"] in ("engine_busy", None)
    at = {name: dict((t, v) for t, v in pts) for name, pts in body["series"].items()}
    assert at["requests_per_s"][past] == pytest.approx(0.1)
    assert at["tokens_per_s"][past] == pytest.approx(4.0)
    assert at["replicas"][past] == 2.0 and at["gpu_utilization"][past] == 0.25
    p95 = at["inference_time_p95_s"][past]
    assert p95 is not None and 0.43 < p95 <= 0.52  # within the 0.5 s sample's bucket
    assert at["requests_per_s"][body["start"]] is None  # before the server ran

    for window, res in (("24h", 120), ("7d", 900)):
        r = _metrics(api, alice, deploy_id, window=window)
        assert r.status_code == 200 and r.json()["resolution_s"] == res
    assert _metrics(api, ADMIN_TOKEN, deploy_id).status_code == 200
    assert _metrics(api, alice, deploy_id, window="2h").status_code == 422

    # Another user: the same 404 as an id that does not exist.
    denied = _metrics(api, bob, deploy_id)
    unknown = _metrics(api, bob, "no-such-deployment")
    assert denied.status_code == unknown.status_code == 404
    assert denied.json() == json.loads(unknown.text.replace("no-such-deployment", deploy_id))
    # An adapter that is not on the deployment is unknown too.
    assert _metrics(api, alice, deploy_id, adapter="nope").status_code == 404


def test_metrics_route_is_in_the_openapi(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    op = spec["paths"]["/v1/deployments/{deploy_id}/metrics"]["get"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/DeploymentMetricsPublic")
    assert "404" in op["responses"]


def test_an_adapters_series_on_its_base(api: Api) -> None:
    from datetime import UTC, datetime

    from modelhost.store.tables import Adapter, User

    app: Any = api.client.app
    db: Database = app.state.services.db
    alice, bob = api.new_user("alice", gpu_limit=1), api.new_user("bob", gpu_limit=1)
    deploy_id = api.create_simulator(alice)
    with db.session() as s:
        ids = dict(s.execute(select(User.username, User.id)).tuples().all())
        for adapter_id, owner in (("a-alice", "alice"), ("a-bob", "bob")):
            s.add(
                Adapter(
                    id=adapter_id,
                    owner_id=ids[owner],
                    name="fr",
                    base_deploy_id=deploy_id,
                    source={"local": {"path": "/x"}},
                    rank=8,
                    target_modules=["q_proj"],
                    created_at=datetime.now(UTC),
                )
            )
    past = mh.align(time.time(), 10) - 120
    with db.session() as s:
        store.add(
            s,
            {
                (deploy_id, "", past): _req(0.2, tokens=30).merge(
                    mh.gauges(replicas=1, gpu_util=0.5, gpu_source="engine_busy")
                ),
                (deploy_id, "", past + 10): mh.gauges(replicas=1, gpu_util=0.0, gpu_source=None),
                (deploy_id, "a-alice", past): _req(0.2, tokens=20),
            },
        )
    r = _metrics(api, alice, deploy_id, adapter="fr")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter"] == "fr" and body["gpu_utilization_source"] == "engine_busy"
    at = {name: dict((t, v) for t, v in pts) for name, pts in body["series"].items()}
    assert at["tokens_per_s"][past] == pytest.approx(2.0)  # the adapter's own tokens
    # Observed for the base but no adapter request: 0, not null.
    assert at["requests_per_s"][past + 10] == 0.0
    assert at["requests_per_s"][past - 10] is None
    assert at["replicas"][past] == 1.0 and at["gpu_utilization"][past] == 0.5  # the base's
    assert _metrics(api, alice, deploy_id, adapter="alice/fr").status_code == 200
    # Bob's adapter of the same name on Alice's deployment is not Alice's to read by its id.
    assert _metrics(api, alice, deploy_id, adapter="a-bob").status_code == 404
    # Bob owns an adapter on it, not the deployment: its metrics are not his to read.
    assert _metrics(api, bob, deploy_id, adapter="fr").status_code == 404
