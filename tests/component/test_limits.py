"""Rate limits and spending limits through a real server on a socket (replicas in-process):
bursts from concurrent clients, in this process's counters and in Redis (127.0.0.1:6379, when
it runs), the 402 hard cap under 200 concurrent requests, the stop and restart of a user's
deployments, and the spending-limit API."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from modelhost.domain.money import parse_micros
from modelhost.store.db import Database
from modelhost.store.tables import Deployment, Event, GpuUsage, RequestUsage, User
from tests.component._live_server import LiveServer, modelhost_server
from tests.conftest import auth, wait_until
from tests.pg import pg_url  # noqa: F401  (fixture)

REDIS_URL = os.environ.get("MODELHOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Per-token prices of the shared endpoint: high, so a few requests cost a visible amount.
PRICING = {"usd_per_1m_prompt_tokens": "100", "usd_per_1m_completion_tokens": "100"}


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not redis_available(), reason="no Redis on 127.0.0.1:6379 (the shared-counter path)"
)


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    overrides: dict[str, object] = {"metering_interval_s": 0.5}
    if request.param == "redis":
        # A prefix of its own: nothing of another run or test is counted.
        overrides |= {"redis_url": REDIS_URL, "redis_key_prefix": f"t{uuid.uuid4().hex}:"}
    with modelhost_server(tmp_path / "data", **overrides) as live:
        yield live


def _client(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, timeout=30)


def _new_user(live: LiveServer, username: str) -> str:
    with _client(live) as c:
        r = c.post("/v1/users", json={"username": username}, headers=auth(live.admin_token))
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def _deploy(live: LiveServer, token: str, name: str, **extra: Any) -> str:
    body = {
        "model_name": name,
        "gpu": "A100-80GB",
        "num_gpus": 1,
        "max_batch_size": 64,
        "engine": "simulator",
        "settings": {"min_instances": 1, "max_instances": 1},
        **extra,
    }
    with _client(live) as c:
        r = c.post("/deploy/llm", json=body, headers=auth(token))
        assert r.status_code == 201, r.text
        deploy_id = str(r.json()["deploy_id"])

        def ready() -> bool:
            got = c.get(f"/deploy/{deploy_id}", headers=auth(token)).json()
            return bool(got["status"] == "ready")

        wait_until(ready, timeout=60, what=f"{name} ready")
    return deploy_id


def _admin_name(live: LiveServer) -> str:
    with _client(live) as c:
        return str(c.get("/v1/me", headers=auth(live.admin_token)).json()["username"])


def _completion(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "hello", "max_tokens": 4}


async def _burst(live: LiveServer, token: str, model: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=live.url, timeout=60, limits=limits) as c:
        return await asyncio.gather(
            *(
                c.post("/v1/completions", json=_completion(model), headers=auth(token))
                for _ in range(n)
            )
        )


def _db(live: LiveServer) -> Database:
    return Database(f"sqlite:///{live.data_dir / 'modelhost.db'}")


# ---- rate limits ------------------------------------------------------------------------------


def test_a_burst_of_3n_admits_exactly_n_per_caller_and_spares_the_owner(server: LiveServer) -> None:
    live = server
    n = 5
    _deploy(live, live.admin_token, "shared", public=True, rate_limits={"rpm": n})
    model = f"{_admin_name(live)}/shared"
    bob, carol = _new_user(live, "bob"), _new_user(live, "carol")

    answers = asyncio.run(_burst(live, bob, model, 3 * n))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * n + [429] * (2 * n)
    for r in answers:
        assert r.headers["x-ratelimit-limit-requests"] == str(n)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.headers["x-ratelimit-remaining-requests"] == "0"

    # Tenant B's limit is its own: bob's flood took nothing of it.
    assert sorted(r.status_code for r in asyncio.run(_burst(live, carol, model, n))) == [200] * n
    # The owner is not limited on their own deployment.
    owner = asyncio.run(_burst(live, live.admin_token, model, 2 * n))
    assert all(r.status_code == 200 for r in owner)
    assert "x-ratelimit-limit-requests" not in owner[0].headers
    # Streams carry the counts too.
    dave = _new_user(live, "dave")
    with _client(live) as c:
        body = {**_completion(model), "stream": True}
        with c.stream("POST", "/v1/completions", json=body, headers=auth(dave)) as r:
            assert r.status_code == 200
            assert r.headers["x-ratelimit-remaining-requests"] == str(n - 1)
            assert b"[DONE]" in r.read()


def test_a_users_and_a_tokens_own_limits(server: LiveServer) -> None:
    live = server
    bob = _new_user(live, "bob")
    _deploy(live, bob, "mine")
    with _client(live) as c:
        r = c.put("/v1/users/bob", json={"rate_limits": {"rpm": 4}}, headers=auth(live.admin_token))
        assert r.status_code == 200, r.text
        assert r.json()["rate_limits"] == {"rpm": 4, "tpm": None}
        r = c.post(
            "/v1/api-tokens", json={"name": "ci", "rate_limits": {"rpm": 2}}, headers=auth(bob)
        )
        assert r.status_code == 201, r.text
        ci = r.json()["token"]
        assert r.json()["rate_limits"] == {"rpm": 2, "tpm": None}
        # Someone else may not change bob's limits.
        carol = _new_user(live, "carol")
        r = c.put("/v1/users/bob", json={"rate_limits": None}, headers=auth(carol))
        assert r.status_code == 403

    def limited() -> bool:
        with _client(live) as c:
            r = c.post("/v1/completions", json=_completion("bob/mine"), headers=auth(bob))
            return "x-ratelimit-limit-requests" in r.headers

    # The directory picks the change up within its poll.
    wait_until(limited, timeout=10, what="bob's limit applied")
    # The token's own limit: 2 of a burst of 6 on that token.
    ci_answers = asyncio.run(_burst(live, ci, "bob/mine", 6))
    assert sorted(r.status_code for r in ci_answers) == [200] * 2 + [429] * 4
    assert ci_answers[0].headers["x-ratelimit-limit-requests"] == "2"
    # Bob's own limit counts all his tokens: the probe (1) and ci's 2 leave one of 4.
    rest = asyncio.run(_burst(live, bob, "bob/mine", 4))
    assert sorted(r.status_code for r in rest) == [200] + [429] * 3


def test_tokens_per_minute(server: LiveServer) -> None:
    live = server
    _deploy(live, live.admin_token, "shared", public=True, rate_limits={"tpm": 5})
    model = f"{_admin_name(live)}/shared"
    bob = _new_user(live, "bob")
    with _client(live) as c:
        first = c.post("/v1/completions", json=_completion(model), headers=auth(bob))
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-limit-tokens"] == "5"
        used = first.json()["usage"]["total_tokens"]
        assert used >= 5

        def refused() -> bool:
            r = c.post("/v1/completions", json=_completion(model), headers=auth(bob))
            return r.status_code == 429

        # The first answer's tokens are counted once it completed.
        wait_until(refused, timeout=5, what="the token limit applied")
        r = c.post("/v1/completions", json=_completion(model), headers=auth(bob))
        assert r.status_code == 429
        assert r.headers["x-ratelimit-remaining-tokens"] == "0"


# ---- spending limits -------------------------------------------------------------------------


def _spend(db: Database, user_id: int) -> tuple[int, int]:
    with db.session() as s:
        tokens = s.scalar(
            select(func.coalesce(func.sum(RequestUsage.cost_micros), 0)).where(
                RequestUsage.user_id == user_id
            )
        )
        gpu = s.scalar(
            select(func.coalesce(func.sum(GpuUsage.cost_micros), 0)).where(
                GpuUsage.user_id == user_id
            )
        )
    return int(tokens or 0), int(gpu or 0)


def test_200_concurrent_requests_never_pass_the_spending_limit(server: LiveServer) -> None:
    _hard_cap(server, _db(server))


def test_the_hard_cap_on_postgres(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    with modelhost_server(tmp_path / "data", metering_interval_s=0.5, database_url=url) as live:
        db = Database(url)
        try:
            _hard_cap(live, db)
        finally:
            db.close()


def _hard_cap(live: LiveServer, db: Database) -> None:
    _deploy(live, live.admin_token, "shared", public=True, pricing=PRICING)
    model = f"{_admin_name(live)}/shared"
    bob = _new_user(live, "bob")
    own = _deploy(live, bob, "own")  # GPU time on a priced A100 accrues while it runs
    limit = "0.030000"
    with _client(live) as c:
        r = c.put(
            "/v1/me/spending-limit",
            json={"usd_per_month": limit, "alert_at": [0.5]},
            headers=auth(bob),
        )
        assert r.status_code == 200, r.text
        assert r.json()["effective_usd_per_month"] == limit

    def limited() -> bool:
        with _client(live) as c:
            huge = {**_completion(model), "max_tokens": 10**6}
            r = c.post("/v1/completions", json=huge, headers=auth(bob))
            return r.status_code == 402

    wait_until(limited, timeout=10, what="bob's limit applied")

    answers = asyncio.run(_burst(live, bob, model, 200))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 402}, codes
    assert codes.count(200) >= 1 and codes.count(402) >= 1
    refusal = next(r for r in answers if r.status_code == 402).json()["error"]
    assert refusal["code"] == "spending_limit_reached"
    assert refusal["type"] == "insufficient_quota"
    admitted = codes.count(200)

    # Refused while others held their reservations; alone, requests go on until what is left
    # cannot cover one more's maximum cost. From then on every request is refused.
    with _client(live) as c:
        for _ in range(200):
            r = c.post("/v1/completions", json=_completion(model), headers=auth(bob))
            if r.status_code == 402:
                break
            assert r.status_code == 200, r.text
            admitted += 1
        else:
            pytest.fail("the spending limit never refused a request")
        later = [
            c.post("/v1/completions", json=_completion(model), headers=auth(bob)) for _ in range(5)
        ]
        # Refused at the gateway, before any replica (no timing bound: shared machines).
        assert [r.status_code for r in later] == [402] * 5
        assert not any("x-replica" in r.headers for r in later)

    with db.session() as s:
        bob_id = int(s.scalar(select(User.id).where(User.username == "bob")) or 0)
    # Every admitted request is in the books (written off the request path).
    wait_until(lambda: _count_requests(db, bob_id) >= admitted, timeout=10, what="the usage rows")
    tokens, gpu = _spend(db, bob_id)
    assert tokens > 0
    assert tokens + gpu <= parse_micros(limit)

    # GPU time takes bob to the limit: his deployment stops, saying why.
    def stopped() -> dict[str, Any] | None:
        with _client(live) as c:
            got = c.get(f"/deploy/{own}", headers=auth(bob)).json()
        return got if got["status"] == "stopped" else None

    got = wait_until(stopped, timeout=30, what="bob's deployment stopped")
    assert "spending limit" in got["fail_reason"]
    with db.session() as s:
        kinds = set(s.scalars(select(Event.kind).where(Event.deploy_id == own)))
        assert {"spending_limit", "spending_alert"} <= kinds
    with _client(live) as c:
        view = c.get("/v1/me/spending-limit", headers=auth(bob)).json()
        assert view["reached"] is True and view["remaining"] == "0.000000"
        assert [a["fraction"] for a in view["alerts"]] == [0.5, 1.0] or [
            a["fraction"] for a in view["alerts"]
        ] == [0.5]
        # Starting it by hand is refused while the limit is reached.
        r = c.post(f"/deploy/{own}/start", headers=auth(bob))
        assert r.status_code == 402
        # Raising the limit starts it again.
        r = c.put("/v1/me/spending-limit", json={"usd_per_month": "5"}, headers=auth(bob))
        assert r.status_code == 200

    def running() -> bool:
        with db.session() as s:
            dep = s.get(Deployment, own)
            return dep is not None and dep.desired_state == "running" and dep.stopped_by is None

    wait_until(running, timeout=10, what="bob's deployment started again")
    with _client(live) as c:
        r = c.post("/v1/completions", json=_completion(model), headers=auth(bob))
        assert r.status_code == 200, r.text


def _count_requests(db: Database, user_id: int) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).where(RequestUsage.user_id == user_id)) or 0)


def test_an_admin_caps_the_limit_a_user_may_set(server: LiveServer) -> None:
    live = server
    bob = _new_user(live, "bob")
    with _client(live) as c:
        r = c.get("/v1/me/spending-limit", headers=auth(bob))
        assert r.status_code == 200
        assert r.json()["usd_per_month"] is None and r.json()["reached"] is False
        r = c.put(
            "/v1/users/bob/spending-limit",
            json={"max_usd_per_month": "20"},
            headers=auth(live.admin_token),
        )
        assert r.status_code == 200, r.text
        assert r.json()["effective_usd_per_month"] == "20.000000"
        for wanted in ("25", None):
            r = c.put("/v1/me/spending-limit", json={"usd_per_month": wanted}, headers=auth(bob))
            assert r.status_code == 422
            assert r.json()["error"]["code"] == "over_spending_cap"
        r = c.put("/v1/me/spending-limit", json={"usd_per_month": "12.5"}, headers=auth(bob))
        assert r.json()["effective_usd_per_month"] == "12.500000"
        for bad in ({"usd_per_month": 1.5}, {"usd_per_month": "-1"}, {"alert_at": [2]}):
            r = c.put("/v1/me/spending-limit", json=bad, headers=auth(bob))
            assert r.status_code == 422, bad
        # Users may not read or set another user's limit; unknown users are 404 for admins.
        assert c.get("/v1/users/bob/spending-limit", headers=auth(bob)).status_code == 403
        r = c.get("/v1/users/nobody/spending-limit", headers=auth(live.admin_token))
        assert r.status_code == 404
