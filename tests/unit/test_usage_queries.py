"""Usage queries: grouping, a GPU period partly inside the window, money as strings."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from modelhost.domain.deployment_config import DeploymentConfig
from modelhost.domain.money import gpu_cost_micros, parse_micros
from modelhost.store.db import Database
from modelhost.store.tables import (
    Adapter,
    ApiToken,
    Deployment,
    GpuUsage,
    RequestUsage,
    User,
)
from modelhost.store.usage_queries import NO_KEY, share, usage, usd
from tests.pg import pg_url

__all__ = ["pg_url"]  # the fixture

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database file, copied for each test (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("usage") / "template.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.close()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, migrated: Path, tmp_path: Path) -> Iterator[Database]:
    """A migrated database: SQLite, and PostgreSQL where one is reachable (else skipped)."""
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_url"))
        database = Database(url.replace("postgresql://", "postgresql+psycopg://", 1))
        database.migrate()
    else:
        path = tmp_path / "m.db"
        shutil.copy(migrated, path)
        database = Database(f"sqlite:///{path}")
    try:
        yield database
    finally:
        database.close()


# ---- rows, as the meters write them ------------------------------------------------------------


def add_user(s: Session, username: str, is_admin: bool = False) -> int:
    user = User(username=username, is_admin=is_admin, gpu_limit=4, created_at=T0)
    s.add(user)
    s.flush()
    return user.id


def add_deployment(
    s: Session,
    deploy_id: str,
    owner_id: int,
    model_name: str,
    gpu: str,
    public: bool = False,
    desired_state: str = "running",
) -> None:
    s.add(
        Deployment(
            id=deploy_id,
            owner_id=owner_id,
            model_name=model_name,
            public=public,
            desired_state=desired_state,
            config=DeploymentConfig(gpu, 1, 8, "simulator").to_json(),
            settings={},
            created_at=T0,
            updated_at=T0,
        )
    )
    s.flush()


def add_token(s: Session, token_id: str, user_id: int, name: str) -> None:
    s.add(
        ApiToken(
            id=token_id,
            user_id=user_id,
            name=name,
            token_hash=token_id.ljust(64, "0"),
            prefix="mh_x",
            created_at=T0,
        )
    )
    s.flush()


def add_adapter(s: Session, adapter_id: str, owner_id: int, name: str, base: str) -> None:
    s.add(
        Adapter(
            id=adapter_id,
            owner_id=owner_id,
            name=name,
            base_deploy_id=base,
            source={"local": {"path": "/x"}},
            rank=8,
            target_modules=["q_proj"],
            created_at=T0,
        )
    )
    s.flush()


def add_gpu(
    s: Session,
    replica_id: str,
    deploy_id: str,
    user_id: int,
    start: datetime,
    end: datetime,
    *,
    gpu: str = "A100-80GB",
    num_gpus: int = 1,
    usd_per_hour: str = "2",
    gpu_ms: int | None = None,
) -> None:
    """One period of one replica; by default it ran the whole period on `num_gpus` GPUs."""
    ms = gpu_ms if gpu_ms is not None else int((end - start).total_seconds() * 1000) * num_gpus
    price = parse_micros(usd_per_hour)
    s.add(
        GpuUsage(
            replica_id=replica_id,
            deploy_id=deploy_id,
            user_id=user_id,
            gpu_type=gpu,
            num_gpus=num_gpus,
            period_start=start,
            period_end=end,
            gpu_ms=ms,
            usd_per_hour_micros=price,
            cost_micros=gpu_cost_micros(ms, price),
        )
    )
    s.flush()


def add_hours(
    s: Session,
    replica_id: str,
    deploy_id: str,
    user_id: int,
    start: datetime,
    hours: float,
    **kw: object,
) -> None:
    """Minute periods covering `hours` from `start`, as the GPU meter writes them."""
    for i in range(int(hours * 60)):
        lo = start + timedelta(minutes=i)
        add_gpu(s, replica_id, deploy_id, user_id, lo, lo + timedelta(minutes=1), **kw)  # type: ignore[arg-type]


def add_request(
    s: Session,
    request_id: str,
    at: datetime,
    user_id: int,
    deploy_id: str,
    prompt: int,
    completion: int,
    cost_usd: str = "0",
    *,
    token: str | None = None,
    adapter: str | None = None,
) -> None:
    s.add(
        RequestUsage(
            request_id=request_id,
            at=at,
            user_id=user_id,
            api_token_id=token,
            deploy_id=deploy_id,
            adapter_id=adapter,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_micros=parse_micros(cost_usd),
        )
    )
    s.flush()


def world(s: Session) -> dict[str, int]:
    """alice owns dep_a (A100) and calls admin's shared endpoint dep_s (H100) with a token and
    an adapter; bob owns dep_b (CPU)."""
    ids = {
        "admin": add_user(s, "admin", is_admin=True),
        "alice": add_user(s, "alice"),
        "bob": add_user(s, "bob"),
    }
    add_deployment(s, "dep_a", ids["alice"], "mine", "A100-80GB")
    add_deployment(s, "dep_s", ids["admin"], "shared", "H100-80GB", public=True)
    add_deployment(s, "dep_b", ids["bob"], "cpu", "CPU")
    add_token(s, "tok_ci", ids["alice"], "ci")
    add_adapter(s, "ad_1", ids["alice"], "sql", "dep_s")
    return ids


# ---- tests -----------------------------------------------------------------------------------


def test_money_is_a_six_decimal_string() -> None:
    assert usd(12_500_000) == "12.500000"
    assert usd(1) == "0.000001"
    assert usd(0) == "0.000000"
    assert usd(-1) == "-0.000001"


def test_shares_of_one_value_add_up_to_it() -> None:
    # 7 cost units over 60 s cut at 20 s and 41 s: integer parts, none lost or doubled.
    parts = [share(7, 60_000, 0, 20_000), share(7, 60_000, 20_000, 41_000)]
    parts.append(share(7, 60_000, 41_000, 60_000))
    assert sum(parts) == 7
    assert share(7, 0, 0, 0) == 7  # an instant counts once


def test_grouped_by_deployment_with_names_and_costs(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        add_hours(s, "r1", "dep_a", ids["alice"], T0, 1, num_gpus=2)  # 2 GPU-hours at 2 USD
        add_request(s, "q1", T0, ids["alice"], "dep_s", 1000, 500, "0.0125", token="tok_ci")
        add_request(s, "q2", T0, ids["alice"], "dep_a", 10, 5)  # own deployment: free
        add_hours(s, "r2", "dep_b", ids["bob"], T0, 1, gpu="CPU", usd_per_hour="0")
    with db.session() as s:
        result = usage(s, T0, T0 + timedelta(days=1), "deployment", ids["alice"])
    rows = {r.key: r for r in result.rows}
    assert set(rows) == {"dep_a", "dep_s"}
    assert rows["dep_a"].name == "alice/mine"
    assert rows["dep_a"].gpu_seconds == 7200.0
    assert usd(rows["dep_a"].gpu_cost_micros) == "4.000000"
    assert (rows["dep_a"].prompt_tokens, rows["dep_a"].completion_tokens) == (10, 5)
    assert rows["dep_s"].name == "admin/shared"
    assert rows["dep_s"].gpu_ms == 0
    assert usd(rows["dep_s"].token_cost_micros) == "0.012500"
    assert usd(result.total_cost_micros) == "4.012500"


def test_all_users_and_other_groupings(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        add_hours(s, "r1", "dep_a", ids["alice"], T0, 0.5)
        add_hours(s, "r2", "dep_b", ids["bob"], T0, 0.5, gpu="CPU", usd_per_hour="0")
        add_request(s, "q1", T0, ids["alice"], "dep_s", 100, 50, "0.001", token="tok_ci")
        add_request(s, "q2", T0, ids["alice"], "dep_s", 7, 3, "0.0001", adapter="ad_1")
        add_request(s, "q3", T0 + timedelta(days=1), ids["bob"], "dep_s", 1, 1, "0.000002")
    end = T0 + timedelta(days=2)
    with db.session() as s:
        everyone = usage(s, T0, end, "deployment", None)
        by_gpu = usage(s, T0, end, "gpu", None)
        by_token = usage(s, T0, end, "api_token", ids["alice"])
        by_adapter = usage(s, T0, end, "adapter", ids["alice"])
        by_day = usage(s, T0, end, "day", None)
    assert [r.key for r in everyone.rows] == ["dep_a", "dep_b", "dep_s"]
    gpus = {r.key: r for r in by_gpu.rows}
    assert set(gpus) == {"A100-80GB", "CPU", "H100-80GB"}
    assert gpus["H100-80GB"].prompt_tokens == 108  # shared endpoint's tokens by its GPU type
    assert gpus["A100-80GB"].gpu_seconds == 1800.0
    tokens = {r.key: r for r in by_token.rows}
    assert tokens["tok_ci"].name == "ci" and tokens["tok_ci"].prompt_tokens == 100
    assert tokens[NO_KEY].gpu_seconds == 1800.0 and tokens[NO_KEY].prompt_tokens == 7
    adapters = {r.key: r for r in by_adapter.rows}
    assert set(adapters) == {"alice/sql", NO_KEY}
    assert adapters["alice/sql"].completion_tokens == 3
    days = {r.key: r for r in by_day.rows}
    assert set(days) == {"2026-11-02", "2026-11-03"}
    assert days["2026-11-03"].prompt_tokens == 1
    assert usd(days["2026-11-02"].total_cost_micros) == "1.001100"


def test_a_period_partly_inside_counts_its_share(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        # One minute, 2 GPUs, 3.6 USD per GPU-hour: 120,000 GPU-ms, 0.12 USD.
        add_gpu(
            s, "r1", "dep_a", ids["alice"], T0, T0 + timedelta(minutes=1),
            num_gpus=2, usd_per_hour="3.6",
        )  # fmt: skip
    with db.session() as s:
        first = usage(s, T0 - timedelta(hours=1), T0 + timedelta(seconds=15), "deployment", None)
        rest = usage(s, T0 + timedelta(seconds=15), T0 + timedelta(hours=1), "deployment", None)
        whole = usage(s, T0, T0 + timedelta(minutes=1), "deployment", None)
    assert first.rows[0].gpu_ms == 30_000 and usd(first.rows[0].gpu_cost_micros) == "0.030000"
    assert rest.rows[0].gpu_ms == 90_000 and usd(rest.rows[0].gpu_cost_micros) == "0.090000"
    assert whole.rows[0].gpu_seconds == 120.0
    assert whole.rows[0].gpu_cost_micros == 120_000


def test_day_grouping_splits_a_period_across_midnight(db: Database) -> None:
    midnight = datetime(2026, 11, 3, tzinfo=UTC)
    with db.session() as s:
        ids = world(s)
        add_gpu(
            s,
            "r1",
            "dep_a",
            ids["alice"],
            midnight - timedelta(minutes=1),
            midnight + timedelta(minutes=1),
        )
    with db.session() as s:
        days = usage(s, midnight - timedelta(days=1), midnight + timedelta(days=1), "day", None)
    assert [(r.key, r.gpu_ms) for r in days.rows] == [
        ("2026-11-02", 60_000),
        ("2026-11-03", 60_000),
    ]


def test_requests_at_the_end_are_outside(db: Database) -> None:
    with db.session() as s:
        ids = world(s)
        add_request(s, "q1", T0, ids["alice"], "dep_s", 1, 1, "0.5")
        add_request(s, "q2", T0 + timedelta(hours=1), ids["alice"], "dep_s", 1, 1, "0.5")
    with db.session() as s:
        result = usage(s, T0, T0 + timedelta(hours=1), "deployment", ids["alice"])
    assert usd(result.total_cost_micros) == "0.500000"
