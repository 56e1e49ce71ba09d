"""Read-only views of a deployment's life: events, replica logs, GPU availability, catalog."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from modelhost.api.deps import ApiServices, PrincipalDep, ServicesDep
from modelhost.api.schemas import (
    CatalogModelPublic,
    CatalogPublic,
    DeploymentMetricsPublic,
    EventsPublic,
    GpuAvailabilityPublic,
    GpuPublic,
    LogEntryPublic,
    LogsPublic,
    MetricSeriesPublic,
)
from modelhost.api.views import event_object
from modelhost.domain.deployments import CPU
from modelhost.domain.metric_history import WINDOWS, plan, series
from modelhost.orchestrator.backends import log_stamps
from modelhost.store import adapters as adapters_store
from modelhost.store import deployments as store
from modelhost.store import metric_history
from modelhost.store.clock import iso
from modelhost.store.tables import Adapter, Replica
from modelhost.store.users import Principal
from modelhost.web.openapi import errors

router = APIRouter()

MAX_LOG_LINES = 5000
FOLLOW_POLL_S = 0.5


@router.get("/deploy/llm/gpu_availability")
def gpu_availability(who: PrincipalDep, services: ServicesDep) -> GpuAvailabilityPublic:
    totals = dict(services.inventory.types())
    used: dict[str, int] = {}
    with services.db.session() as s:
        for row in store.live_replica_rows(s):
            for device in row.devices:
                gpu = services.inventory.type_of(device)
                if gpu is not None:
                    used[gpu] = used.get(gpu, 0) + 1
    return GpuAvailabilityPublic(
        gpus=[
            GpuPublic(
                gpu=gpu,
                total=total,
                available=max(0, total - used.get(gpu, 0)),
                usd_per_hour=services.settings.price_per_hour(gpu),
                virtual=services.inventory.is_virtual(gpu) if gpu != CPU else False,
            )
            for gpu, total in sorted(totals.items())
        ]
    )


@router.get("/v1/catalog/models")
def catalog_models(who: PrincipalDep, services: ServicesDep) -> CatalogPublic:
    return CatalogPublic(
        models=[
            CatalogModelPublic(name=m.name, description=m.description, available=m.available)
            for m in services.catalog.values()
        ]
    )


@router.get("/deploy/{deploy_id}/events", responses=errors(404, 422))
def events(
    deploy_id: str,
    who: PrincipalDep,
    services: ServicesDep,
    after: int = Query(default=0, ge=0),
    limit: int = Query(default=500, ge=1, le=5000),
) -> EventsPublic:
    with services.db.session() as s:
        store.get_owned(s, who, deploy_id)
        events = store.list_events(s, deploy_id, after, limit)
        return EventsPublic(events=[event_object(e) for e in events])


def _replica_logs(
    services: ApiServices, who: Principal, deploy_id: str, replica: str | None, since: float | None
) -> list[Replica]:
    with services.db.session() as s:
        store.get_owned(s, who, deploy_id)
        rows = store.replicas_of(s, deploy_id)
    out = []
    for r in rows:
        if replica and r.id != replica:
            continue
        if since is not None and r.exited_at is not None and r.exited_at.timestamp() < since:
            continue
        out.append(r)
    return out


def _entry(replica_id: str, line: str, ts: float | None) -> LogEntryPublic:
    when = iso(datetime.fromtimestamp(ts, UTC)) if ts is not None else None
    return LogEntryPublic(ts=when, replica=replica_id, line=line)


# Two answers, so no response_model: the 200 is documented by hand (JSON, or NDJSON lines of
# the same entries with follow=true).
LOGS_200: dict[int | str, dict[str, Any]] = {
    200: {
        "model": LogsPublic,
        "description": "the last lines; with `follow=true`, NDJSON lines of `LogEntryPublic` "
        "(`application/x-ndjson`) as they are written",
    }
}


@router.get(
    "/deploy/{deploy_id}/logs", response_model=None, responses={**LOGS_200, **errors(404, 422)}
)
def logs(
    deploy_id: str,
    request: Request,
    who: PrincipalDep,
    services: ServicesDep,
    replica: str | None = None,
    since: float | None = Query(default=None, description="unix seconds"),
    limit: int = Query(default=100, ge=1, le=MAX_LOG_LINES),
    follow: bool = False,
) -> LogsPublic | StreamingResponse:
    rows = _replica_logs(services, who, deploy_id, replica, since)
    entries = [
        _entry(r.id, line, ts)
        for r in rows
        if r.log_path
        for line, ts in log_stamps.tail(r.log_path, limit)
    ][-limit:]
    if not follow:
        return LogsPublic(entries=entries)
    return StreamingResponse(
        _follow(services, who, deploy_id, replica, entries, request),
        media_type="application/x-ndjson",
    )


async def _follow(
    services: ApiServices,
    who: Principal,
    deploy_id: str,
    replica: str | None,
    first: list[LogEntryPublic],
    request: Request,
) -> AsyncIterator[bytes]:
    """NDJSON: the last lines, then every new line of every replica, as it is written."""
    for entry in first:
        yield _ndjson(entry)
    offsets: dict[str, int] = {}
    for r in await asyncio.to_thread(_replica_logs, services, who, deploy_id, replica, None):
        if r.log_path:
            offsets[r.id] = _size(Path(r.log_path))
    partial: dict[str, bytes] = {}
    while not await request.is_disconnected():
        try:
            rows = await asyncio.to_thread(_replica_logs, services, who, deploy_id, replica, None)
        except Exception:
            return  # deleted, or our access ended
        for r in rows:
            if not r.log_path:
                continue
            chunk = _read_from(Path(r.log_path), offsets.get(r.id, 0))
            if not chunk:
                continue
            offsets[r.id] = offsets.get(r.id, 0) + len(chunk)
            data = partial.pop(r.id, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                partial[r.id] = rest
            # Read within FOLLOW_POLL_S of being written: the time it is read is its time.
            now = time.time()
            for line in lines:
                yield _ndjson(_entry(r.id, line.decode("utf-8", "replace"), now))
        await asyncio.sleep(FOLLOW_POLL_S)


def _ndjson(entry: LogEntryPublic) -> bytes:
    # json.dumps as before (not pydantic's JSON): the same bytes, non-ASCII escaped.
    return (json.dumps(entry.model_dump()) + "\n").encode()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(1024 * 1024)
    except OSError:
        return b""


@router.get("/v1/deployments/{deploy_id}/metrics", responses=errors(404, 422))
def deployment_metrics(
    deploy_id: str,
    who: PrincipalDep,
    services: ServicesDep,
    window: Literal["1h", "24h", "7d"] = "1h",
    adapter: str | None = Query(
        default=None, description="one of your adapters on this deployment, by name or id"
    ),
) -> DeploymentMetricsPublic:
    """The deployment's health over the window: requests/s, generated tokens/s, inference
    time (p50, p95), queue time, ready replicas, GPU utilisation. Owner or admin; anyone else
    gets the same 404 as for an unknown id."""
    read = plan(WINDOWS[window], time.time(), services.settings.metric_sample_interval_s + 1)
    with services.db.session() as s:
        store.get_owned(s, who, deploy_id)
        base = metric_history.read(s, deploy_id, "", read)
        adapter_name: str | None = None
        if adapter is None:
            points = series(base, read)
        else:
            row = _adapter_on(s, who, deploy_id, adapter)
            adapter_name = row.name
            own = series(metric_history.read(s, deploy_id, row.id, read), read, observed=base)
            shared = series(base, read)
            # The base's replicas serve the adapter: their gauges are the adapter's too.
            points = {**own, "replicas": shared["replicas"]}
            points["gpu_utilization"] = shared["gpu_utilization"]
    return DeploymentMetricsPublic(
        deploy_id=deploy_id,
        adapter=adapter_name,
        window=window,
        resolution_s=read.resolution_s,
        start=read.start,
        end=read.end,
        series=MetricSeriesPublic(**points),
        gpu_utilization_source=metric_history.latest_gpu_source(base),
    )


def _adapter_on(s: Session, who: Principal, deploy_id: str, name: str) -> Adapter:
    """The caller's adapter (an admin: anyone's) on the deployment, by name, `user/name` or
    id; any other is unknown."""
    short = name.rsplit("/", 1)[-1]
    rows = s.scalars(
        select(Adapter).where(
            Adapter.base_deploy_id == deploy_id,
            Adapter.deleted_at.is_(None),
            or_(Adapter.name == short, Adapter.id == name),
        )
    )
    for row in rows:
        if who.is_admin or row.owner_id == who.user_id:
            return row
    raise adapters_store.not_found(name)
