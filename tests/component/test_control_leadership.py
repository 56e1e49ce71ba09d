"""The control loops under the leader lease (serve/control.py, serve/leadership.py), in one
real app on SQLite with in-process replicas: another holder takes the lease, so the app stops
its loops at once, leaves its replica running and keeps routing to it from the database; the
lease comes back, and the app adopts the replica instead of starting another. And what the
leader's autoscaler learns of the requests other processes forwarded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from modelhost.domain import metric_history as mh
from modelhost.serve.autoscale_glue import latest, monotonic_now, requests_seen_since
from modelhost.serve.control import ControlLoops
from modelhost.store import leases
from modelhost.store.db import Database
from modelhost.store.tables import MetricHistory
from tests.component.live_app import live_app
from tests.conftest import ADMIN_TOKEN, auth, make_settings, wait_until
from tests.fake_backend import FakeBackend

LEASE = {
    "leader_lease_ttl_s": 1.5,
    "leader_lease_renew_s": 0.2,
    "leader_lease_margin_s": 0.3,
    "routing_poll_s": 0.1,
}


def test_deposed_then_elected_again_without_a_second_replica(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", **LEASE)
    with live_app(settings) as live:
        client = live.client
        client.headers.update(auth(ADMIN_TOKEN))
        loops: ControlLoops = live.app.state.loops
        backend = loops.backend
        assert isinstance(backend, FakeBackend)
        assert client.get("/readyz").json()["leader"] is True

        body = {
            "model_name": "m1",
            "gpu": "CPU",
            "max_batch_size": 4,
            "engine": "simulator",
            "settings": {"min_instances": 1, "max_instances": 1},
        }
        r = client.post("/deploy/llm", json=body)
        assert r.status_code == 201, r.text
        deploy_id = r.json()["deploy_id"]

        def running() -> int:
            return int(client.get(f"/deploy/{deploy_id}").json()["instances"]["running"])

        wait_until(lambda: running() == 1, timeout=20, what="one replica ready")

        def complete() -> int:
            req = {"model": "admin/m1", "prompt": "hi", "max_tokens": 2}
            return client.post("/v1/openai/completions", json=req).status_code

        assert complete() == 200
        starts = [c for c in backend.calls if c[0] == "start"]
        assert len(starts) == 1

        # Another process takes the lease (ours is made to have expired in the database).
        db = live.services.db
        with db.session() as s:
            s.execute(text("UPDATE leader_lease SET expires_at = 0"))
            assert leases.try_acquire(s, "someone-else", 60.0)
        wait_until(lambda: not loops.leading, timeout=2, what="the loops to stop")
        ready = client.get("/readyz").json()
        assert ready["leader"] is False and ready["loops"] is True and ready["status"] == "ok"
        assert loops.reconciler is None
        calls = len(backend.calls)
        time.sleep(0.5)
        # Nothing acted on the replica: it runs on, and requests still reach it (routed from
        # the replica row the leader wrote).
        assert backend.calls[calls:] == []
        assert [o.state.value for o in backend.observe()] == ["ready"]
        assert complete() == 200

        # The lease comes back: the replica is adopted, not started again.
        with db.session() as s:
            assert leases.release(s, "someone-else")
        wait_until(lambda: loops.leading, timeout=3, what="elected again")
        time.sleep(1.0)  # a few reconcile passes
        assert [c for c in backend.calls if c[0] == "start"] == starts
        assert running() == 1
        assert complete() == 200


def test_the_autoscaler_sees_requests_other_processes_forwarded(tmp_path: Path) -> None:
    """A follower's requests reach the leader's autoscaler through the metric history every
    process writes: the latest bucket with requests, as a lower bound of the last request."""
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    now = time.time()
    fine = mh.TIERS[0].resolution_s
    recent = mh.align(now - 25, fine)
    with db.session() as s:
        for deploy_id, start, requests, res in [
            ("d1", recent - 60, 3, fine),
            ("d1", recent, 1, fine),
            ("d1", recent + fine, 0, fine),  # gauges only: no request
            ("d2", mh.align(now - 8 * 3600, fine), 5, fine),  # older than the horizon
            ("d3", mh.align(now, 60), 2, 60),  # the coarse tier is not read
        ]:
            s.add(
                MetricHistory(
                    deploy_id=deploy_id,
                    adapter_id="",
                    resolution_s=res,
                    bucket_start=start,
                    requests=requests,
                )
            )
    with db.session() as s:
        seen = requests_seen_since(s, now - mh.TIERS[0].keep_s)
    db.close()
    assert seen == {"d1": float(recent)}
    # On the autoscaler's monotonic clock: never later than the request really was.
    mono = latest(None, seen["d1"])
    assert mono is not None and monotonic_now() - mono == pytest.approx(now - recent, abs=0.5)
    assert latest(monotonic_now(), seen["d1"]) == pytest.approx(monotonic_now(), abs=0.5)
    assert latest(5.0, None) == 5.0
