"""Metric history in the store: the `metric_history` rows (domain/metric_history.py says what
a row holds and how rows add up).

`add` folds aggregates into every tier at once (a 10 s bucket and the 1 min bucket around it),
adding to what a row already holds: two passes, or two server processes sharing a database,
never overwrite each other. `expire` drops each tier's rows older than it keeps. `read` gives
one deployment's (or adapter's) buckets over a window, rolled up to the window's resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelhost.domain.metric_history import (
    TIERS,
    Aggregate,
    GpuSource,
    ReadPlan,
    Tier,
    align,
    expired_before,
    rollup,
)
from modelhost.store.tables import MetricHistory

# (deploy_id, adapter_id ("" for the deployment as a whole), bucket start in epoch seconds)
Key = tuple[str, str, int]

_SOURCES: dict[str, GpuSource] = {"nvml": "nvml", "engine_busy": "engine_busy"}


def _aggregate(row: MetricHistory) -> Aggregate:
    return Aggregate(
        requests=row.requests,
        tokens=row.tokens,
        inference_count=row.inference_count,
        inference_sum_s=row.inference_sum_s,
        inference_hist={int(k): int(v) for k, v in (row.inference_hist or {}).items()},
        queue_count=row.queue_count,
        queue_sum_s=row.queue_sum_s,
        replicas_sum=row.replicas_sum,
        replica_samples=row.replica_samples,
        gpu_util_sum=row.gpu_util_sum,
        gpu_util_samples=row.gpu_util_samples,
        gpu_source=_SOURCES.get(row.gpu_source or ""),
    )


def _store(row: MetricHistory, agg: Aggregate) -> None:
    row.requests = agg.requests
    row.tokens = agg.tokens
    row.inference_count = agg.inference_count
    row.inference_sum_s = agg.inference_sum_s
    row.inference_hist = {str(k): v for k, v in sorted(agg.inference_hist.items())}
    row.queue_count = agg.queue_count
    row.queue_sum_s = agg.queue_sum_s
    row.replicas_sum = agg.replicas_sum
    row.replica_samples = agg.replica_samples
    row.gpu_util_sum = agg.gpu_util_sum
    row.gpu_util_samples = agg.gpu_util_samples
    row.gpu_source = agg.gpu_source


def add(s: Session, points: Mapping[Key, Aggregate], tiers: Sequence[Tier] = TIERS) -> int:
    """Add each point to its bucket in every tier. Returns the rows touched. A row another
    process inserts at the same moment makes the transaction fail (the unique key): the
    caller keeps the points and adds them again later."""
    touched = 0
    for tier in tiers:
        merged: dict[Key, Aggregate] = {}
        for (deploy_id, adapter_id, t), agg in points.items():
            key = (deploy_id, adapter_id, align(t, tier.resolution_s))
            prev = merged.get(key)
            merged[key] = agg if prev is None else prev.merge(agg)
        if not merged:
            continue
        existing = s.scalars(
            select(MetricHistory)
            .where(
                MetricHistory.resolution_s == tier.resolution_s,
                MetricHistory.deploy_id.in_({k[0] for k in merged}),
                MetricHistory.bucket_start.in_({k[2] for k in merged}),
            )
            .with_for_update()
        )
        rows = {(r.deploy_id, r.adapter_id, r.bucket_start): r for r in existing}
        for key, agg in merged.items():
            row = rows.get(key)
            if row is None:
                row = MetricHistory(
                    deploy_id=key[0],
                    adapter_id=key[1],
                    resolution_s=tier.resolution_s,
                    bucket_start=key[2],
                )
                _store(row, agg)
                s.add(row)
            else:
                _store(row, _aggregate(row).merge(agg))
            touched += 1
    s.flush()
    return touched


def expire(s: Session, now: float, tiers: Sequence[Tier] = TIERS) -> int:
    """Drop every tier's rows older than it keeps. Returns the rows deleted."""
    deleted = 0
    for tier in tiers:
        result = s.execute(
            delete(MetricHistory).where(
                MetricHistory.resolution_s == tier.resolution_s,
                MetricHistory.bucket_start < expired_before(tier, now),
            )
        )
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


def read(s: Session, deploy_id: str, adapter_id: str, plan: ReadPlan) -> dict[int, Aggregate]:
    """The deployment's (adapter_id "") or adapter's buckets in the plan's window, rolled up
    to its resolution: bucket start -> aggregate; buckets with no row are absent."""
    rows = s.scalars(
        select(MetricHistory).where(
            MetricHistory.deploy_id == deploy_id,
            MetricHistory.adapter_id == adapter_id,
            MetricHistory.resolution_s == plan.tier.resolution_s,
            MetricHistory.bucket_start >= plan.start,
            MetricHistory.bucket_start < plan.end,
        )
    )
    return rollup(((r.bucket_start, _aggregate(r)) for r in rows), plan.resolution_s)


def latest_gpu_source(buckets: Mapping[int, Aggregate]) -> GpuSource | None:
    """Where the newest GPU utilisation in these buckets came from."""
    for t in sorted(buckets, reverse=True):
        if buckets[t].gpu_source is not None:
            return buckets[t].gpu_source
    return None
