"""Usage and invoice routes: shapes, CSV, HTML, admin scopes, tenancy (403 admin_only, 404)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from modelhost import Client
from modelhost.cli.main import app as cli_app
from modelhost.client.errors import ModelhostAPIError
from modelhost.config import Settings
from modelhost.store.clock import utcnow
from modelhost.store.db import Database
from modelhost.store.invoices import week_start
from modelhost.store.tables import User
from tests.component.conftest import Api
from tests.component.live_app import live_app
from tests.conftest import ADMIN_TOKEN, auth
from tests.unit.test_usage_queries import add_deployment, add_hours, add_request

PAST_MONDAY = datetime(2026, 10, 5, tzinfo=UTC)
WINDOW = {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}


class World:
    """alice and bob with usage in a closed week (October 2026) and alice's in this week."""

    def __init__(self, new_user: Callable[[str], str], db: Database) -> None:
        self.alice = new_user("alice")
        self.bob = new_user("bob")
        self.now = utcnow()
        self.this_week = week_start(self.now)
        with db.session() as s:
            ids = {u.username: u.id for u in s.scalars(select(User))}
            self.alice_id, self.bob_id = ids["alice"], ids["bob"]
            # Deployments that are stopped: the reconciler leaves them alone.
            stopped = {"desired_state": "stopped"}
            add_deployment(s, "dep_alice", ids["alice"], "mine", "A100-80GB", **stopped)
            add_deployment(s, "dep_bob", ids["bob"], "his", "H100-80GB", **stopped)
            add_deployment(
                s, "dep_shared", ids["admin"], "shared", "A100-80GB", public=True, **stopped
            )
            # A closed week: alice 2 GPUs x 1 h at 2 USD, and tokens on the shared endpoint.
            add_hours(s, "r1", "dep_alice", ids["alice"], PAST_MONDAY + timedelta(hours=9), 1,
                      num_gpus=2, usd_per_hour="2")  # fmt: skip
            add_request(s, "q1", PAST_MONDAY + timedelta(hours=10), ids["alice"], "dep_shared",
                        400_000, 100_000, "0.25")  # fmt: skip
            # bob, the same week: 1 h of an H100 at 3 USD.
            add_hours(s, "r2", "dep_bob", ids["bob"], PAST_MONDAY + timedelta(hours=9), 1,
                      gpu="H100-80GB", usd_per_hour="3")  # fmt: skip
            # The current week: a few minutes of alice's deployment.
            add_hours(s, "r3", "dep_alice", ids["alice"], self.this_week, 0.05)


class ApiWorld(World):
    def __init__(self, api: Api) -> None:
        self.api = api
        super().__init__(api.new_user, api.client.app.state.services.db)  # type: ignore[attr-defined]


@pytest.fixture
def world(api: Api) -> ApiWorld:
    return ApiWorld(api)


def test_usage_by_deployment_is_the_contract_shape(world: ApiWorld) -> None:
    r = world.api.client.get("/v1/usage", params=WINDOW, headers=auth(world.alice))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"start", "end", "rows", "total_cost"}
    assert body["start"] == "2026-10-01T00:00:00Z" and body["end"] == "2026-11-01T00:00:00Z"
    rows = {row["key"]: row for row in body["rows"]}
    assert rows["dep_alice"] == {
        "key": "dep_alice",
        "name": "alice/mine",
        "gpu_seconds": 7200.0,
        "gpu_cost": "4.000000",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "token_cost": "0.000000",
        "total_cost": "4.000000",
    }
    assert rows["dep_shared"]["token_cost"] == "0.250000"
    assert rows["dep_shared"]["prompt_tokens"] == 400_000
    assert body["total_cost"] == "4.250000"
    assert "dep_bob" not in rows


def test_usage_groupings_and_defaults(world: ApiWorld) -> None:
    c, h = world.api.client, auth(world.alice)
    by_gpu = c.get("/v1/usage", params={**WINDOW, "group_by": "gpu"}, headers=h).json()
    assert [row["key"] for row in by_gpu["rows"]] == ["A100-80GB"]
    by_day = c.get("/v1/usage", params={**WINDOW, "group_by": "day"}, headers=h).json()
    assert [row["key"] for row in by_day["rows"]] == ["2026-10-05"]
    # Default window: the start of this calendar month (UTC) to now.
    default = c.get("/v1/usage", headers=h).json()
    now = world.now
    assert default["start"] == f"{now.year:04d}-{now.month:02d}-01T00:00:00Z"
    assert datetime.fromisoformat(default["end"]) >= now


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "model"}, "group_by"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-11-02", "end": "2026-11-01"}, "end"),
    ],
)
def test_bad_parameters_are_422_in_the_error_shape(
    world: ApiWorld, params: dict[str, str], param: str
) -> None:
    r = world.api.client.get("/v1/usage", params=params, headers=auth(world.alice))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_user_and_all_are_for_admins(world: ApiWorld) -> None:
    c = world.api.client
    for params in ({"user": "bob"}, {"all": "true"}):
        for path in ("/v1/usage", "/v1/usage.csv"):
            r = c.get(path, params={**WINDOW, **params}, headers=auth(world.alice))
            assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    r = c.get("/v1/invoices", params={"user": "bob"}, headers=auth(world.alice))
    assert r.status_code == 403
    bob = c.get("/v1/usage", params={**WINDOW, "user": "bob"}, headers=auth(ADMIN_TOKEN)).json()
    assert [row["key"] for row in bob["rows"]] == ["dep_bob"] and bob["total_cost"] == "3.000000"
    everyone = c.get("/v1/usage", params={**WINDOW, "all": "true"}, headers=auth(ADMIN_TOKEN))
    assert {row["key"] for row in everyone.json()["rows"]} == {
        "dep_alice",
        "dep_bob",
        "dep_shared",
    }
    r = c.get("/v1/usage", params={"user": "nobody"}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 404
    both = {"user": "bob", "all": "true"}
    assert c.get("/v1/usage", params=both, headers=auth(ADMIN_TOKEN)).status_code == 422


def test_usage_csv(world: ApiWorld) -> None:
    r = world.api.client.get("/v1/usage.csv", params=WINDOW, headers=auth(world.alice))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == [
        "key",
        "name",
        "gpu_seconds",
        "gpu_cost",
        "prompt_tokens",
        "completion_tokens",
        "token_cost",
        "total_cost",
    ]
    mine = next(row for row in rows if row["key"] == "dep_alice")
    assert mine["gpu_seconds"] == "7200.000" and mine["total_cost"] == "4.000000"


def test_invoices_list_show_and_html(world: ApiWorld) -> None:
    c, h = world.api.client, auth(world.alice)
    listed = c.get("/v1/invoices", headers=h).json()["invoices"]
    assert [(i["period_start"][:10], i["status"]) for i in listed] == [
        (world.this_week.strftime("%Y-%m-%d"), "open"),
        ("2026-10-05", "final"),
    ]
    closed = listed[1]
    assert closed["invoice_id"] == f"inv_{world.alice_id}_20261005"
    assert closed["period_end"] == "2026-10-12T00:00:00Z" and closed["total"] == "4.250000"
    inv = c.get(f"/v1/invoices/{closed['invoice_id']}", headers=h).json()
    assert inv["user"] == "alice" and inv["total"] == "4.250000" and inv["currency"] == "USD"
    assert inv["lines"] == [
        {
            "description": "alice/mine: A100-80GB GPU time",
            "deploy_id": "dep_alice",
            "gpu": "A100-80GB",
            "quantity": "2.000000",
            "unit": "GPU-hour",
            "unit_price": "2.000000",
            "amount": "4.000000",
        },
        {
            "description": "admin/shared: 400000 prompt + 100000 completion tokens",
            "deploy_id": "dep_shared",
            "gpu": None,
            "quantity": "0.500000",
            "unit": "1M tokens",
            "unit_price": "0.500000",
            "amount": "0.250000",
        },
    ]
    page = c.get(f"/v1/invoices/{closed['invoice_id']}.html", headers=h)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for text in ("alice/mine: A100-80GB GPU time", "admin/shared", "4.250000", "final"):
        assert text in page.text
    assert "<script" not in page.text and "http" not in page.text.split("<body>")[1]


def test_another_users_invoice_is_404(world: ApiWorld) -> None:
    c = world.api.client
    bobs = c.get("/v1/invoices", headers=auth(world.bob)).json()["invoices"]
    assert [i["total"] for i in bobs] == ["3.000000"]
    bob_id = bobs[0]["invoice_id"]
    for path in (f"/v1/invoices/{bob_id}", f"/v1/invoices/{bob_id}.html"):
        r = c.get(path, headers=auth(world.alice))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert c.get(path, headers=auth(world.bob)).status_code == 200
        assert c.get(path, headers=auth(ADMIN_TOKEN)).status_code == 200
    missing = f"inv_{world.alice_id}_20260105"  # a Monday without usage
    for bad in (missing, "inv_nope", "inv_1_20261006"):
        assert c.get(f"/v1/invoices/{bad}", headers=auth(world.alice)).status_code == 404
    # An admin may list another user's invoices.
    r = c.get("/v1/invoices", params={"user": "bob"}, headers=auth(ADMIN_TOKEN))
    assert [i["invoice_id"] for i in r.json()["invoices"]] == [bob_id]


def test_sdk_and_cli(settings: Settings, tmp_path: Path) -> None:
    with live_app(settings) as live:
        world = World(live.new_user, live.services.db)
        with Client(live.url, world.alice) as mh:
            usage = mh.usage("2026-10-01", datetime(2026, 11, 1, tzinfo=UTC))
            assert usage.total_cost == Decimal("4.25")
            assert {r.key: r.gpu_cost for r in usage.rows}["dep_alice"] == Decimal("4")
            assert "dep_alice,alice/mine,7200.000" in mh.usage_csv(**WINDOW)
            listed = mh.invoices()
            assert [i.status for i in listed] == ["open", "final"]
            inv = mh.invoice(listed[1].invoice_id)
            assert inv.total == Decimal("4.25") and len(inv.lines) == 2
            assert inv.lines[0].unit_price == Decimal(2)
            assert "alice/mine" in mh.invoice_html(inv.invoice_id)
            with pytest.raises(ModelhostAPIError) as caught:
                mh.usage(all=True)
            assert caught.value.status_code == 403
        env: dict[str, Any] = {
            "MODELHOST_CLI_CONFIG": str(tmp_path / "cli.json"),
            "MODELHOST_URL": live.url,
            "MODELHOST_TOKEN": world.alice,
        }
        runner = CliRunner()
        result = runner.invoke(
            cli_app, ["usage", "--start", WINDOW["start"], "--end", WINDOW["end"]], env=env
        )
        assert result.exit_code == 0, result.output
        assert "alice/mine" in result.stdout and "Total: 4.250000 USD" in result.stdout
        result = runner.invoke(
            cli_app, ["usage", "--start", "2026-10-01", "--end", "2026-11-01", "--csv"], env=env
        )
        assert result.stdout.startswith("key,name,gpu_seconds,")
        result = runner.invoke(cli_app, ["usage", "--all"], env=env)
        assert result.exit_code == 1 and "admin" in result.stderr
        result = runner.invoke(cli_app, ["invoices", "list"], env=env)
        assert result.exit_code == 0, result.output
        assert inv.invoice_id in result.stdout and "final" in result.stdout
        result = runner.invoke(cli_app, ["invoices", "show", inv.invoice_id], env=env)
        assert result.exit_code == 0, result.output
        assert "alice/mine: A100-80GB GPU time" in result.stdout
        assert "Total: 4.250000 USD" in result.stdout
        page = tmp_path / "inv.html"
        result = runner.invoke(
            cli_app, ["invoices", "show", inv.invoice_id, "--html", str(page)], env=env
        )
        assert result.exit_code == 0 and "4.250000" in page.read_text()
