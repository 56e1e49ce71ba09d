"""Rotating a deployment's HF token replaces its replicas, and the new ones run with the new
token; the token never shows in the deploy object, its events or the replica command line. Real
replica processes (their environment and command line are read from /proc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.store import deployments as store
from modelhost.store.tables import Deployment, Replica
from tests.component.live_app import Live, live_app
from tests.conftest import make_settings, wait_until

pytestmark = pytest.mark.e2e

OLD, NEW = "hf_old_0123456789abcdefOLD", "hf_new_0123456789abcdefNEW"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def live_replicas(live: Live, deploy_id: str) -> list[Replica]:
    with live.services.db.session() as s:
        return [r for r in store.replicas_of(s, deploy_id) if r.exited_at is None]


def ready_replica_of_generation(live: Live, deploy_id: str, generation: int) -> Replica | None:
    """The only live replica, once it is ready and of this generation."""
    rows = live_replicas(live, deploy_id)
    if len(rows) == 1 and rows[0].generation == generation and rows[0].state == "ready":
        return rows[0]
    return None


def generation(live: Live, deploy_id: str) -> int:
    with live.services.db.session() as s:
        row = s.get(Deployment, deploy_id)
        assert row is not None
        return row.generation


def test_a_new_hf_token_replaces_replicas_with_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", reconcile_interval_s=0.1)
    with live_app(settings, real_engines=True) as live:
        h = {"Authorization": f"Bearer {live.new_user('alice')}"}
        body = {
            "model_name": "gated",
            "gpu": "CPU",
            "engine": "simulator",
            "hf": {"repo": "org/gated-model", "token": OLD},
            "settings": {"min_instances": 1, "max_instances": 1},
        }
        r = live.client.post("/deploy/llm", json=body, headers=h)
        assert r.status_code == 201, r.text
        deploy_id = r.json()["deploy_id"]
        first = wait_until(
            lambda: ready_replica_of_generation(live, deploy_id, 1), what="first replica ready"
        )
        assert first.pid is not None
        assert environ(first.pid)["HF_TOKEN"] == OLD and OLD not in cmdline(first.pid)

        # The same token again changes nothing: no replacement.
        same = {"config": {"hf": {"token": OLD}}}
        assert live.client.put(f"/deploy/{deploy_id}", json=same, headers=h).status_code == 200
        assert generation(live, deploy_id) == 1

        r = live.client.put(
            f"/deploy/{deploy_id}", json={"config": {"hf": {"token": NEW}}}, headers=h
        )
        assert r.status_code == 200, r.text
        assert NEW not in r.text and r.json()["config"]["weights"]["hf"]["token"] == "***"
        second = wait_until(
            lambda: ready_replica_of_generation(live, deploy_id, 2),
            timeout=60,
            what="the old replica replaced by one of generation 2",
        )
        assert second.pid is not None and second.id != first.id
        assert environ(second.pid)["HF_TOKEN"] == NEW and NEW not in cmdline(second.pid)

        # Nowhere to be read back: not in the deploy object, the events, the stored config.
        got = live.client.get(f"/deploy/{deploy_id}", headers=h).text
        events = live.client.get(f"/deploy/{deploy_id}/events", headers=h).text
        for secret in (OLD, NEW):
            assert secret not in got and secret not in events
        with live.services.db.session() as s:
            row = s.get(Deployment, deploy_id)
            assert row is not None
            assert NEW not in str(row.config) and NEW.encode() not in (row.hf_token_enc or b"")
