"""Metering through the whole app (in-process engines): each inference request's tokens land
in request_usage once, from the engine's counts, whether the client streamed or not and
whether it asked for usage; the replica's GPU time lands in gpu_usage and is flushed at
shutdown."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from modelhost.config import Settings
from modelhost.domain.money import gpu_cost_micros
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.serve.gpu_meter import GpuMeter
from modelhost.store.db import Database
from modelhost.store.metering import RequestTokens, insert_request_usage
from modelhost.store.tables import ApiToken, GpuUsage, RequestUsage, User
from tests.component.conftest import Api
from tests.conftest import auth, make_settings, wait_until
from tests.metering_helpers import metering_db, obs
from tests.pg import pg_url  # noqa: F401  (fixture)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", metering_interval_s=0.2)


def _events(text: str) -> list[Any]:
    out: list[Any] = []
    for event in text.split("\n\n"):
        data = event.strip().removeprefix("data:").strip()
        if data and data != "[DONE]":
            out.append(json.loads(data))
    return out


def _usage_rows(db: Database) -> list[RequestUsage]:
    with db.session() as s:
        return list(s.scalars(select(RequestUsage).order_by(RequestUsage.id)))


def test_tokens_and_gpu_time_are_metered(api: Api) -> None:
    app: Any = api.client.app
    db: Database = app.state.services.db
    url = db.url
    started = time.time()
    alice = api.new_user("alice", gpu_limit=4)
    deploy_id = api.create_simulator(alice, gpu="A100-80GB", num_gpus=2, max_batch_size=8)
    with db.session() as s:
        user_id = s.scalar(select(User.id).where(User.username == "alice"))
        token_ids = set(s.scalars(select(ApiToken.id).where(ApiToken.user_id == user_id)))
    chat = {"model": "alice/m1", "messages": [{"role": "user", "content": "hello there"}]}

    # Non-streaming: the answer's usage.
    r = api.client.post("/v1/chat/completions", json={**chat, "max_tokens": 5}, headers=auth(alice))
    assert r.status_code == 200, r.text
    first_ready = time.time()
    usage = r.json()["usage"]
    expected = [(usage["prompt_tokens"], usage["completion_tokens"])]

    # A stream whose client did not ask for usage: asked upstream, not forwarded.
    r = api.client.post(
        "/v1/chat/completions", json={**chat, "max_tokens": 4, "stream": True}, headers=auth(alice)
    )
    assert r.status_code == 200
    events = _events(r.text)
    assert events and all(e.get("choices") != [] for e in events)
    assert all("usage" not in e or e["usage"] is None for e in events)
    assert r.text.rstrip().endswith("data: [DONE]")
    expected.append((usage["prompt_tokens"], 4))

    # A stream whose client asked: forwarded, and the same counts recorded.
    r = api.client.post(
        "/v1/chat/completions",
        json={**chat, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
        headers=auth(alice),
    )
    assert r.status_code == 200
    usage_chunks = [e for e in _events(r.text) if e.get("choices") == []]
    assert len(usage_chunks) == 1
    u = usage_chunks[0]["usage"]
    expected.append((u["prompt_tokens"], u["completion_tokens"]))

    # LoRAX: the details (or the engine's token headers).
    r = api.client.post(
        "/deployments/alice/m1/generate",
        json={"inputs": "hello", "parameters": {"max_new_tokens": 6, "details": True}},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    details = r.json()["details"]
    expected.append((details["prompt_tokens"], details["generated_tokens"]))
    r = api.client.post(
        "/deployments/alice/m1/generate_stream",
        json={"inputs": "hello", "parameters": {"max_new_tokens": 2}},
        headers=auth(alice),
    )
    assert r.status_code == 200
    last = _events(r.text)[-1]["details"]
    expected.append((last["prompt_tokens"], last["generated_tokens"]))

    # An invalid request is refused before any engine sees it: nothing metered.
    r = api.client.post("/v1/chat/completions", json={"model": "alice/m1"}, headers=auth(alice))
    assert r.status_code == 400

    wait_until(lambda: len(_usage_rows(db)) >= len(expected), timeout=10, what="request_usage rows")
    rows = _usage_rows(db)
    assert [(row.prompt_tokens, row.completion_tokens) for row in rows] == expected
    assert all(row.prompt_tokens > 0 and row.completion_tokens > 0 for row in rows)
    assert {row.user_id for row in rows} == {user_id}
    assert {row.deploy_id for row in rows} == {deploy_id}
    assert {row.api_token_id for row in rows} <= token_ids and rows[0].api_token_id
    assert len({row.request_id for row in rows}) == len(rows)
    assert {row.adapter_id for row in rows} == {None}
    assert {row.cost_micros for row in rows} == {0}

    # GPU time, checkpointed while the replica runs...
    wait_until(
        lambda: _gpu_ms(db) > 0,
        timeout=10,
        what="gpu_usage rows",
    )
    last_request = time.time()
    api.client.__exit__(None, None, None)  # a clean shutdown: the final flush
    ended = time.time()
    after = Database(url)
    try:
        total = _gpu_ms(after)
        with after.session() as s:
            rows_gpu = list(s.scalars(select(GpuUsage)))
    finally:
        after.close()
    assert {(g.user_id, g.deploy_id, g.gpu_type, g.num_gpus) for g in rows_gpu} == {
        (user_id, deploy_id, "A100-80GB", 2)
    }
    assert {g.usd_per_hour_micros for g in rows_gpu} == {2_000_000}
    # ...up to the replica's stop at shutdown: at least the time it was seen serving, at most
    # the whole test, 2 GPUs each.
    assert (last_request - first_ready) * 1000 * 2 <= total <= (ended - started) * 1000 * 2


def _gpu_ms(db: Database) -> int:
    with db.session() as s:
        return sum(s.scalars(select(GpuUsage.gpu_ms)))


def test_the_writes_are_idempotent_on_postgres(pg_url: str) -> None:  # noqa: F811
    """The dialect-specific upserts (ON CONFLICT) on PostgreSQL: the GPU meter rewritten and
    restarted, a price change, a request id written twice."""
    db, user_id = metering_db(
        pg_url.replace("postgresql://", "postgresql+psycopg://", 1), num_gpus=2, engine="sim"
    )
    now = datetime.now(UTC)
    try:
        t0 = 1_767_268_800.0  # a minute boundary
        replica = obs("r1", t0)
        clock = [t0 + 30.0]
        cheap = Settings(gpu_prices="A100-80GB=2.0")
        GpuMeter(db, cheap, lambda: [replica], clock=lambda: clock[0]).run_once()
        clock[0] = t0 + 90.0
        dear = Settings(gpu_prices="A100-80GB=4.0")
        for _ in range(2):
            GpuMeter(db, dear, lambda: [replica], clock=lambda: clock[0]).run_once()
        with db.session() as s:
            rows = list(s.scalars(select(GpuUsage).order_by(GpuUsage.period_start)))
        assert [(g.gpu_ms, g.usd_per_hour_micros, g.cost_micros) for g in rows] == [
            (120_000, 2_000_000, gpu_cost_micros(120_000, 2_000_000)),
            (60_000, 4_000_000, gpu_cost_micros(60_000, 4_000_000)),
        ]
        row = RequestTokens("req1", now, user_id, None, "d1", None, 3, 4)
        for _ in range(2):
            with db.session() as s:
                insert_request_usage(s, [row])
        assert [(r.request_id, r.prompt_tokens, r.completion_tokens) for r in _usage_rows(db)] == [
            ("req1", 3, 4)
        ]
    finally:
        db.close()


def test_the_gpu_cost_counters_count_only_what_this_meter_added(tmp_path: Path) -> None:
    """A replica started before the meter (adopted after a restart: its past is already in
    the books) counts from the meter's first pass; one started after counts from its start;
    a pass written twice counts nothing twice."""
    db, _ = metering_db(f"sqlite:///{tmp_path / 'm.db'}", num_gpus=1, engine="sim")
    try:
        t0 = 1_767_268_800.0

        def replica(rid: str, started_at: float) -> ReplicaObservation:
            return obs(rid, started_at, devices=("A100-80GB:0",))

        observed = [replica("old", t0 - 600.0)]
        clock = [t0]
        registry = CollectorRegistry()
        meter = GpuMeter(
            db,
            Settings(gpu_prices="A100-80GB=3.6"),  # 1 micro-dollar per GPU-ms
            lambda: observed,
            clock=lambda: clock[0],
            registry=registry,
        )

        def value(name: str) -> float:
            labels = {
                "user": "alice",
                "deployment": "d1",
                "model_name": "alice/m",
                "gpu": "A100-80GB",
            }
            return registry.get_sample_value(name, labels) or 0.0

        meter.run_once()  # the adopted replica: its past is not this meter's to count
        assert value("modelhost_gpu_seconds_total") == 0
        clock[0] = t0 + 10.0
        observed.append(replica("new", t0 + 4.0))
        meter.run_once()
        meter.run_once()  # the same pass again: nothing more
        assert value("modelhost_gpu_seconds_total") == pytest.approx(10.0 + 6.0)
        assert value("modelhost_gpu_cost_usd_total") == pytest.approx(16_000 / 1e6)
    finally:
        db.close()
