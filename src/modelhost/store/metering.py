"""The write side of metering: GPU-time periods (upserted, only upward) and request tokens
(inserted once per request id). Readers are store/usage_queries.py and store/invoices.py.

Both writes are idempotent, so a batch written twice (a retry after a failure whose commit in
fact went through, a meter restarted over the same replicas) counts once:
- `gpu_usage` is keyed (replica_id, period_start): a rewrite keeps the row's first price and
  raises gpu_ms (and the cost, at that first price) only when the new value is larger;
- `request_usage` is keyed by request_id: a second insert of the same id is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelhost.domain.deployment_config import DeploymentConfig
from modelhost.domain.metering import PeriodUsage
from modelhost.domain.money import MS_PER_HOUR
from modelhost.store.db import Database
from modelhost.store.tables import Base, Deployment, GpuUsage, Replica, RequestUsage
from modelhost.store.write_behind import WriteBehind

_GPU = Base.metadata.tables[GpuUsage.__tablename__]
_REQ = Base.metadata.tables[RequestUsage.__tablename__]


@dataclass(frozen=True)
class MeteredDeployment:
    """What the GPU meter needs of a deployment: who pays, and for what."""

    deploy_id: str
    user_id: int
    gpu_type: str
    num_gpus: int


@dataclass(frozen=True)
class GpuPeriodRow:
    deploy: MeteredDeployment
    num_gpus: int
    period: PeriodUsage
    usd_per_hour_micros: int


@dataclass(frozen=True)
class RequestTokens:
    request_id: str
    at: datetime
    user_id: int
    api_token_id: str | None
    deploy_id: str
    adapter_id: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int = 0


def metered_deployments(s: Session, deploy_ids: Iterable[str]) -> dict[str, MeteredDeployment]:
    """Owner, GPU type and count of each deployment (deleted ones included: their replicas
    still ran)."""
    ids = sorted(set(deploy_ids))
    if not ids:
        return {}
    out: dict[str, MeteredDeployment] = {}
    for dep in s.scalars(select(Deployment).where(Deployment.id.in_(ids))):
        config = DeploymentConfig.from_json(dep.config)
        out[dep.id] = MeteredDeployment(dep.id, dep.owner_id, config.gpu, config.num_gpus)
    return out


def replica_exits(s: Session, replica_ids: Iterable[str]) -> dict[str, datetime]:
    """When each replica exited, as the reconciler recorded it (those it has)."""
    ids = sorted(set(replica_ids))
    if not ids:
        return {}
    rows = s.execute(
        select(Replica.id, Replica.exited_at).where(
            Replica.id.in_(ids), Replica.exited_at.is_not(None)
        )
    )
    return {rid: at for rid, at in rows if at is not None}


def _insert(s: Session, table: Any) -> Any:
    name = s.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"metering does not support the {name} database")


def upsert_gpu_periods(s: Session, rows: Sequence[GpuPeriodRow]) -> None:
    """Insert each period, or raise an existing one's gpu_ms (never lower it), its cost
    recomputed at the price the row was first written with."""
    if not rows:
        return
    values = [
        {
            "replica_id": r.period.replica_id,
            "deploy_id": r.deploy.deploy_id,
            "user_id": r.deploy.user_id,
            "gpu_type": r.deploy.gpu_type,
            "num_gpus": r.num_gpus,
            "period_start": r.period.period_start,
            "period_end": r.period.period_end,
            "gpu_ms": r.period.gpu_ms,
            "usd_per_hour_micros": r.usd_per_hour_micros,
            "cost_micros": r.period.cost_micros(r.usd_per_hour_micros),
        }
        for r in rows
    ]
    stmt = _insert(s, _GPU)
    new, old = stmt.excluded, _GPU.c
    grows = new.gpu_ms > old.gpu_ms
    # Round half up in integers: (ms * price + half an hour) // one hour, as money.py does.
    cost_at_first_price = (
        new.gpu_ms * old.usd_per_hour_micros + literal(MS_PER_HOUR // 2)
    ) // literal(MS_PER_HOUR)
    stmt = stmt.on_conflict_do_update(
        index_elements=[old.replica_id, old.period_start],
        set_={
            "gpu_ms": case((grows, new.gpu_ms), else_=old.gpu_ms),
            "cost_micros": case((grows, cost_at_first_price), else_=old.cost_micros),
        },
    )
    s.connection().execute(stmt, values)


def insert_request_usage(s: Session, rows: Iterable[RequestTokens]) -> None:
    """One row per request id; a request id already written is left as it is."""
    values = [
        {
            "request_id": r.request_id,
            "at": r.at,
            "user_id": r.user_id,
            "api_token_id": r.api_token_id,
            "deploy_id": r.deploy_id,
            "adapter_id": r.adapter_id,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_micros": r.cost_micros,
        }
        for r in rows
    ]
    if not values:
        return
    stmt = _insert(s, _REQ).on_conflict_do_nothing(index_elements=[_REQ.c.request_id])
    s.connection().execute(stmt, values)


def gpu_totals(s: Session) -> Mapping[str, tuple[int, int]]:
    """replica_id -> (gpu_ms, cost_micros) summed over its periods (tests, checks)."""
    out: dict[str, tuple[int, int]] = {}
    for row in s.execute(select(_GPU.c.replica_id, _GPU.c.gpu_ms, _GPU.c.cost_micros)):
        ms, cost = out.get(row.replica_id, (0, 0))
        out[row.replica_id] = (ms + row.gpu_ms, cost + row.cost_micros)
    return out


class RequestUsageLog:
    """Request tokens written off the request path (store/write_behind.py): `record` queues and
    returns at once; one thread writes batches; `close` (a clean shutdown) writes the rest."""

    def __init__(self, db: Database, *, retry_s: float = 1.0) -> None:
        self._db = db
        self.writes: WriteBehind[str, RequestTokens] = WriteBehind(
            "request-usage", self._write, retry_s=retry_s
        )

    def record(self, row: RequestTokens) -> None:
        self.writes.put(row.request_id, row)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self.writes.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        return self.writes.close(timeout_s)

    def _write(self, batch: Mapping[str, RequestTokens]) -> None:
        with self._db.session() as s:
            insert_request_usage(s, batch.values())
