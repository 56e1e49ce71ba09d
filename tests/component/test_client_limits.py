"""The Python SDK's spending limits, rate limits and per-token pricing against the real app
(served on 127.0.0.1 by uvicorn): round-trips, the admin cap's 422, the 402 and 429 mappings."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from modelhost.client import (
    Client,
    ModelhostAPIError,
    ModelhostRateLimitError,
    ModelhostSpendingLimitError,
)
from modelhost.client.models import Pricing, RateLimits
from tests.component._live_server import LiveServer
from tests.conftest import wait_until

_names = (f"lim-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def admin(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, live_server.admin_token) as c:
        yield c


def _user(live: LiveServer, admin: Client, username: str) -> Client:
    created = admin.create_user(username, gpu_limit=2)
    return Client(live.url, created.token)


def test_own_spending_limit_round_trip(live_server: LiveServer, admin: Client) -> None:
    with _user(live_server, admin, "sl-alice") as alice:
        view = alice.spending_limit()
        assert view.usd_per_month is None and view.effective_usd_per_month is None
        assert view.reached is False and view.spent == Decimal(0) and view.month

        view = alice.set_spending_limit("50", alert_at=[0.8, 0.5])
        assert view.usd_per_month == Decimal("50") and isinstance(view.usd_per_month, Decimal)
        assert view.effective_usd_per_month == Decimal("50")
        assert view.alert_at == [0.5, 0.8]
        assert view.remaining == Decimal("50") and not view.reached

        # A Decimal goes as an exact string; alert_at left out is unchanged.
        view = alice.set_spending_limit(Decimal("12.25"))
        assert view.usd_per_month == Decimal("12.25") and view.alert_at == [0.5, 0.8]
        assert alice.spending_limit().usd_per_month == Decimal("12.25")

        view = alice.set_spending_limit(None)
        assert view.usd_per_month is None and view.effective_usd_per_month is None

        with pytest.raises(TypeError):
            alice.set_spending_limit(12.5)  # type: ignore[arg-type]
        with pytest.raises(ModelhostAPIError) as info:
            alice.set_spending_limit("0.0000001")
        assert info.value.status_code == 422
        with pytest.raises(ModelhostAPIError) as info:
            alice.set_spending_limit("5", alert_at=[1.5])
        assert info.value.status_code == 422


def test_an_admin_caps_a_users_limit(live_server: LiveServer, admin: Client) -> None:
    with _user(live_server, admin, "sl-carol") as carol:
        view = admin.set_user_spending_limit("sl-carol", max_usd_per_month="20")
        assert view.max_usd_per_month == Decimal("20") and view.usd_per_month is None
        assert view.effective_usd_per_month == Decimal("20")

        for wanted in ("25", None):
            with pytest.raises(ModelhostAPIError) as info:
                carol.set_spending_limit(wanted)
            err = info.value
            assert (err.status_code, err.code, err.param) == (
                422,
                "over_spending_cap",
                "usd_per_month",
            )

        assert carol.set_spending_limit("10").effective_usd_per_month == Decimal("10")
        view = admin.user_spending_limit("sl-carol")
        assert (view.usd_per_month, view.max_usd_per_month) == (Decimal("10"), Decimal("20"))

        # The admin may set the user's own limit too; unnamed fields stay as they are.
        view = admin.set_user_spending_limit("sl-carol", usd_per_month="15", alert_at=[0.9])
        assert view.usd_per_month == Decimal("15") and view.max_usd_per_month == Decimal("20")
        assert view.alert_at == [0.9]
        view = admin.set_user_spending_limit("sl-carol", max_usd_per_month=None)
        assert view.max_usd_per_month is None and view.usd_per_month == Decimal("15")

        with pytest.raises(ValueError):
            admin.set_user_spending_limit("sl-carol")
        with pytest.raises(ModelhostAPIError) as info:
            carol.user_spending_limit("sl-carol")
        assert info.value.status_code == 403
        with pytest.raises(ModelhostAPIError) as info:
            admin.user_spending_limit("nobody-here")
        assert info.value.status_code == 404


def test_a_reached_limit_is_a_spending_limit_error(live_server: LiveServer, admin: Client) -> None:
    with _user(live_server, admin, "sl-dave") as dave:
        assert dave.set_spending_limit("0").reached is True
        with pytest.raises(ModelhostSpendingLimitError) as info:
            dave.create_llm(next(_names), engine="simulator", settings={"min_instances": 0})
        err = info.value
        assert isinstance(err, ModelhostAPIError)
        assert (err.status_code, err.code) == (402, "spending_limit_reached")
        assert "spending limit" in err.message
        dave.set_spending_limit(None)


def test_update_user_rate_limits_and_gpu_limit(live_server: LiveServer, admin: Client) -> None:
    with _user(live_server, admin, "rl-erin") as erin:
        user = admin.update_user("rl-erin", rate_limits={"rpm": 4})
        assert user.rate_limits == RateLimits(rpm=4, tpm=None)
        listed = {u.username: u for u in admin.list_users()}
        assert listed["rl-erin"].rate_limits == RateLimits(rpm=4)

        user = admin.update_user("rl-erin", gpu_limit=3)
        assert user.gpu_limit == 3 and user.rate_limits == RateLimits(rpm=4)
        user = admin.update_user("rl-erin", rate_limits=RateLimits(tpm=1000))
        assert user.rate_limits == RateLimits(rpm=None, tpm=1000)
        assert admin.update_user("rl-erin", rate_limits=None).rate_limits is None

        with pytest.raises(ValueError):
            admin.update_user("rl-erin")
        with pytest.raises(ModelhostAPIError) as info:
            erin.update_user("rl-erin", gpu_limit=8)
        assert info.value.status_code == 403
        with pytest.raises(ModelhostAPIError) as info:
            admin.update_user("rl-erin", rate_limits={"rpm": 0})
        assert info.value.status_code == 422


def test_token_rate_limits(live_server: LiveServer, admin: Client) -> None:
    with _user(live_server, admin, "rl-fay") as fay:
        tok = fay.create_token("ci", rate_limits=RateLimits(rpm=2))
        assert tok.token and tok.rate_limits == RateLimits(rpm=2, tpm=None)
        plain = fay.create_token("plain")
        assert plain.rate_limits is None
        listed = {t.name: t for t in fay.list_tokens()}
        assert listed["ci"].rate_limits == RateLimits(rpm=2)
        assert listed["plain"].rate_limits is None


def test_deployment_pricing_and_rate_limits(admin: Client) -> None:
    dep = admin.create_llm(
        next(_names),
        engine="simulator",
        settings={"min_instances": 0, "max_instances": 1},
        public=True,
        pricing={"usd_per_1m_prompt_tokens": "0.2", "usd_per_1m_completion_tokens": Decimal("0.4")},
        rate_limits={"rpm": 10},
    )
    try:
        assert dep.public is True
        assert dep.pricing == Pricing(
            usd_per_1m_prompt_tokens=Decimal("0.2"), usd_per_1m_completion_tokens=Decimal("0.4")
        )
        assert dep.rate_limits == RateLimits(rpm=10)

        # Only what is named changes: the prices stay when the limits change, and back.
        dep = admin.update_deployment(dep.deploy_id, rate_limits={"rpm": 10, "tpm": 500})
        assert dep.rate_limits == RateLimits(rpm=10, tpm=500)
        assert dep.pricing is not None
        assert dep.pricing.usd_per_1m_completion_tokens == Decimal("0.4")
        dep = admin.update_deployment(
            dep.deploy_id,
            pricing=Pricing(usd_per_1m_prompt_tokens="1", usd_per_1m_completion_tokens="2"),
        )
        assert dep.pricing is not None
        assert dep.pricing.usd_per_1m_prompt_tokens == Decimal("1")
        assert dep.rate_limits == RateLimits(rpm=10, tpm=500)

        dep = admin.update_deployment(dep.deploy_id, pricing=None, rate_limits=None)
        assert dep.pricing is None and dep.rate_limits is None
        got = admin.get_deployment(dep.deploy_id)
        assert got.pricing is None and got.rate_limits is None

        with pytest.raises(TypeError):
            admin.update_deployment(
                dep.deploy_id,
                pricing={"usd_per_1m_prompt_tokens": 0.1, "usd_per_1m_completion_tokens": "1"},  # type: ignore[dict-item]
            )
        with pytest.raises(ModelhostAPIError) as info:
            admin.update_deployment(
                dep.deploy_id,
                pricing={"usd_per_1m_prompt_tokens": "-1", "usd_per_1m_completion_tokens": "1"},
            )
        assert info.value.status_code == 422
    finally:
        admin.delete_deployment(dep.deploy_id)


def test_a_rate_limited_call_is_a_rate_limit_error(live_server: LiveServer, admin: Client) -> None:
    with _user(live_server, admin, "rl-gus") as gus:
        name = next(_names)
        dep = gus.create_llm(name, engine="simulator", settings={"min_instances": 1})
        dep = gus.wait_until_settled(dep.deploy_id, timeout=120, poll_interval=0.1)
        assert dep.status == "ready", dep.fail_reason
        tok = gus.create_token("one-a-minute", rate_limits={"rpm": 1})
        assert tok.token
        messages = [{"role": "user", "content": "hi"}]
        with Client(live_server.url, tok.token) as limited:

            def refused() -> ModelhostRateLimitError | None:
                try:
                    list(limited.chat_stream(dep.full_name, messages, max_tokens=2))
                except ModelhostRateLimitError as exc:
                    return exc
                return None

            err = wait_until(refused, timeout=15, interval=0.2, what="the token's limit")
        assert isinstance(err, ModelhostRateLimitError)
        assert (err.status_code, err.code) == (429, "rate_limited")
        assert err.retry_after is not None and 0 < err.retry_after <= 60
        assert (err.limit_requests, err.remaining_requests) == (1, 0)
        assert err.limit_tokens is None
        gus.delete_deployment(dep.deploy_id)


def test_errors_in_a_stream_map_by_code() -> None:
    """An error event after the stream began (status 200) maps by its code alone."""
    events = {
        "spending_limit_reached": ModelhostSpendingLimitError,
        "rate_limited": ModelhostRateLimitError,
        "engine_failed": ModelhostAPIError,
    }
    for code, cls in events.items():
        body = f'data: {{"error": {{"message": "m", "code": "{code}"}}}}\n\n'.encode()

        def handler(req: httpx.Request, body: bytes = body) -> httpx.Response:
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

        with (
            Client("http://mh.test", "t", transport=httpx.MockTransport(handler)) as c,
            pytest.raises(ModelhostAPIError) as info,
        ):
            list(c.chat_stream("a/b", [{"role": "user", "content": "x"}]))
        assert type(info.value) is cls and info.value.in_stream and info.value.code == code
