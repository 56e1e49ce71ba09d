"""Per-token prices on a shared endpoint (in-process engines): an admin's public, priced
deployment charges other callers per token in request_usage and /v1/usage, never its owner; a
price change applies live (no new generation); the tokens and costs show on /metrics."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from modelhost.config import Settings
from modelhost.domain.money import format_micros, token_cost_micros
from modelhost.store.db import Database
from modelhost.store.tables import Deployment, RequestUsage, User
from tests.component.conftest import Api
from tests.conftest import ADMIN_TOKEN, auth, make_settings, wait_until

PRICING = {"usd_per_1m_prompt_tokens": "0.2", "usd_per_1m_completion_tokens": "1.500000"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", metering_interval_s=0.2)


def _rows(db: Database) -> list[RequestUsage]:
    with db.session() as s:
        return list(s.scalars(select(RequestUsage).order_by(RequestUsage.id)))


def _chat(api: Api, token: str, model: str, max_tokens: int = 5) -> tuple[int, int]:
    r = api.client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
        },
        headers=auth(token),
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def test_a_shared_endpoint_charges_callers_other_than_its_owner(api: Api) -> None:
    app: Any = api.client.app
    db: Database = app.state.services.db
    admin = api.client.get("/v1/me", headers=auth(ADMIN_TOKEN)).json()["username"]
    r = api.client.post(
        "/deploy/llm",
        json={
            "model_name": "shared",
            "gpu": "A100-80GB",
            "num_gpus": 1,
            "max_batch_size": 8,
            "engine": "simulator",
            "public": True,
            "pricing": PRICING,
            "settings": {"min_instances": 1, "max_instances": 1},
        },
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 201, r.text
    deploy_id = r.json()["deploy_id"]
    assert r.json()["pricing"] == {
        "usd_per_1m_prompt_tokens": "0.200000",
        "usd_per_1m_completion_tokens": "1.500000",
    }
    model = f"{admin}/shared"
    bob = api.new_user("bob", gpu_limit=1)
    with db.session() as s:
        bob_id = s.scalar(select(User.id).where(User.username == "bob"))
        generation = s.scalar(select(Deployment.generation).where(Deployment.id == deploy_id))

    p, c = _chat(api, bob, model)
    bob_cost = token_cost_micros(p, c, 200_000, 1_500_000)
    assert bob_cost > 0
    _chat(api, ADMIN_TOKEN, model)  # the owner: its GPU time, no token charge
    wait_until(lambda: len(_rows(db)) >= 2, timeout=10, what="request_usage rows")
    rows = _rows(db)
    assert [(row.user_id == bob_id, row.cost_micros) for row in rows] == [
        (True, bob_cost),
        (False, 0),
    ]

    usage = api.client.get("/v1/usage", headers=auth(bob)).json()
    assert [(row["key"], row["token_cost"]) for row in usage["rows"]] == [
        (deploy_id, format_micros(bob_cost))
    ]

    # A price change applies live, without a new generation.
    r = api.client.put(
        f"/deploy/{deploy_id}",
        json={
            "pricing": {
                "usd_per_1m_prompt_tokens": "1000",
                "usd_per_1m_completion_tokens": "2000.5",
            }
        },
        headers=auth(ADMIN_TOKEN),
    )
    assert r.status_code == 200, r.text
    assert r.json()["pricing"]["usd_per_1m_completion_tokens"] == "2000.500000"
    changed = time.monotonic()
    while True:
        p, c = _chat(api, bob, model)
        want = token_cost_micros(p, c, 1_000_000_000, 2_000_500_000)
        wait_until(lambda n=len(rows) + 1: len(_rows(db)) >= n, timeout=10, what="a row")
        rows = _rows(db)
        if rows[-1].cost_micros == want:
            break
        assert time.monotonic() - changed < 1.5, "the new price is not applied"
        time.sleep(0.05)
    with db.session() as s:
        assert s.scalar(select(Deployment.generation).where(Deployment.id == deploy_id)) == (
            generation
        )

    # Removed: no charge, and no pricing on the deploy object.
    r = api.client.put(f"/deploy/{deploy_id}", json={"pricing": None}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    assert "pricing" not in r.json()

    text = api.client.get("/metrics", headers=auth(ADMIN_TOKEN)).text
    for user in ("bob", admin):
        for kind in ("prompt", "completion"):
            assert _metric(text, "modelhost_tokens_total", user, deploy_id, model, "", kind) > 0
    bob_usd = _metric(text, "modelhost_cost_usd_total", "bob", deploy_id, model, "", "tokens")
    assert bob_usd == pytest.approx(sum(row.cost_micros for row in rows) / 1e6)
    assert _metric(text, "modelhost_cost_usd_total", admin, deploy_id, model, "", "tokens") == 0
    gpu = f'deployment="{deploy_id}",gpu="A100-80GB",model_name="{model}",user="{admin}"'
    wait_until(
        lambda: (
            re.search(
                rf"^modelhost_gpu_cost_usd_total\{{{gpu}\}} [0-9.e-]+$",
                api.client.get("/metrics", headers=auth(ADMIN_TOKEN)).text,
                re.M,
            )
            is not None
        ),
        timeout=10,
        what="the GPU cost series",
    )


def _metric(
    text: str, name: str, user: str, deployment: str, model_name: str, adapter: str, kind: str
) -> float:
    # prometheus_client writes labels sorted by name.
    labels = (
        f'adapter="{adapter}",deployment="{deployment}",kind="{kind}",'
        f'model_name="{model_name}",user="{user}"'
    )
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    assert found is not None, f"{name}{{{labels}}} not on /metrics"
    return float(found.group(1))


@pytest.mark.parametrize(
    "pricing",
    [
        {"usd_per_1m_prompt_tokens": "0.0000001", "usd_per_1m_completion_tokens": "1"},
        {"usd_per_1m_prompt_tokens": "-1", "usd_per_1m_completion_tokens": "1"},
        {"usd_per_1m_prompt_tokens": 0.2, "usd_per_1m_completion_tokens": "1"},
        {"usd_per_1m_prompt_tokens": "abc", "usd_per_1m_completion_tokens": "1"},
        {"usd_per_1m_prompt_tokens": "1"},
    ],
)
def test_invalid_prices_are_refused(api: Api, pricing: dict[str, object]) -> None:
    body = {
        "model_name": "m",
        "gpu": "A100-80GB",
        "engine": "simulator",
        "pricing": pricing,
    }
    r = api.client.post("/deploy/llm", json=body, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 422, r.text
