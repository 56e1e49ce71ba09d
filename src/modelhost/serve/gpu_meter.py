"""The GPU meter: every `metering_interval_s` it checkpoints the GPU time of every replica
that holds devices (starting, ready or draining: initialising is billed; a pending instance is
no replica and costs nothing) into `gpu_usage`, one row per replica and UTC minute.

Each pass writes, for each replica, its run from `started_at` (the process start, kept by the
backend when a restarted server adopts it) to now (or `exited_at`), cut into minutes by
`domain/metering.py`, and upserts the rows that may have changed: gpu_ms only grows and a
row keeps its first price (store/metering.py). So a pass written twice, or a new meter after a
crash or restart going over the same replicas from their start, counts nothing twice, and a
crash of the server loses at most the time since the last pass.

A replica that exits is usually seen once as stopped or failed with its `exited_at` before the
reconciler forgets it; if it vanished between two passes, its exit time is read from the
`replicas` table (the reconciler records it), else it is billed up to the last pass.

With a registry, `modelhost_gpu_cost_usd_total{user, deployment, model_name, gpu}` (and
`modelhost_gpu_seconds_total`) count what this process's passes added: from where this meter
last wrote a replica, or from its start when it started after this meter did. A replica adopted
after a restart is counted from this meter's first pass on (what went before is already in the
books and was counted by the process that wrote it), so the counters never count twice; they
are for display, the books are `gpu_usage`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhost.config import Settings
from modelhost.domain.metering import PERIOD_MS, PeriodUsage, periods_since, to_ms
from modelhost.domain.money import MICROS_PER_USD, gpu_cost_micros
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.store.db import Database
from modelhost.store.metering import (
    GpuPeriodRow,
    MeteredDeployment,
    metered_deployments,
    replica_exits,
    upsert_gpu_periods,
)
from modelhost.store.tables import Deployment, User

log = logging.getLogger(__name__)


class GpuMeter:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        observe: Callable[[], Sequence[ReplicaObservation]],
        *,
        clock: Callable[[], float] = time.time,
        period_ms: int = PERIOD_MS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._observe = observe
        self._clock = clock
        self._period_ms = period_ms
        self._lock = threading.Lock()  # one pass at a time (the loop's and the final flush)
        # replica -> (deploy_id, started_at ms, num_gpus from its devices, written until ms)
        self._open: dict[str, tuple[str, int, int, int]] = {}
        # Replicas whose whole run is written (ended): not written again while still observed.
        self._closed: set[str] = set()
        self.rows_written = 0
        # Replicas started before this (epoch ms) may have been written by an earlier process.
        self._born_ms = to_ms(clock())
        self._gpu_seconds: Counter | None = None
        self._gpu_cost: Counter | None = None
        if registry is not None:
            self._gpu_seconds = Counter(
                "modelhost_gpu_seconds",
                "GPU-seconds (seconds x num_gpus) metered by this process, by owner and deployment",
                ["user", "deployment", "model_name", "gpu"],
                registry=registry,
            )
            self._gpu_cost = Counter(
                "modelhost_gpu_cost_usd",
                "GPU time charged (USD; display only, the books are gpu_usage in micros)",
                ["user", "deployment", "model_name", "gpu"],
                registry=registry,
            )

    def run_once(self) -> int:
        """One checkpoint (blocking: run it in a thread). Returns the rows written."""
        with self._lock:
            return self._pass()

    def _pass(self) -> int:
        now_ms = to_ms(self._clock())
        observed = {o.replica_id: o for o in self._observe()}
        self._closed &= observed.keys()
        # replica -> (deploy_id, start ms, end ms, devices count, ended)
        spans: dict[str, tuple[str, int, int, int, bool]] = {}
        for o in observed.values():
            if o.replica_id in self._closed:
                continue
            start = to_ms(o.started_at)
            if o.holds_devices:
                end = max(start, now_ms)
                spans[o.replica_id] = (o.deploy_id, start, end, len(o.devices), False)
            else:
                end = to_ms(o.exited_at) if o.exited_at is not None else start
                spans[o.replica_id] = (o.deploy_id, start, max(start, end), len(o.devices), True)
        vanished = [rid for rid in self._open if rid not in observed]
        with self._db.session() as s:
            exits = replica_exits(s, vanished)
            for rid in vanished:
                deploy_id, start, devices, written = self._open[rid]
                at = exits.get(rid)
                end = to_ms(at.timestamp()) if at is not None else written
                spans[rid] = (deploy_id, start, max(start, end), devices, True)
            deployments = metered_deployments(s, {span[0] for span in spans.values()})
            rows: list[GpuPeriodRow] = []
            # What this pass adds to what this process wrote: (deployment, gpu_ms, price).
            added: list[tuple[MeteredDeployment, int, int]] = []
            for rid, (deploy_id, start, end, devices, _) in spans.items():
                dep = deployments.get(deploy_id)
                if dep is None:
                    continue
                num_gpus = devices or dep.num_gpus
                tracked = self._open.get(rid)
                periods: list[PeriodUsage] = periods_since(
                    rid,
                    start,
                    end,
                    num_gpus,
                    tracked[3] if tracked is not None else None,
                    self._period_ms,
                )
                price = self._settings.gpu_price_micros(dep.gpu_type)
                rows.extend(GpuPeriodRow(dep, num_gpus, p, price) for p in periods)
                since = tracked[3] if tracked is not None else None
                if since is None and start >= self._born_ms:
                    since = start  # started after this meter: no earlier process wrote it
                if since is not None and end > since:
                    added.append((dep, (end - since) * num_gpus, price))
            upsert_gpu_periods(s, rows)
            names = self._names(s, {dep.user_id for dep, _, _ in added})
            models = self._model_names(s, {dep.deploy_id for dep, _, _ in added})
        # Committed: remember how far each replica is written.
        for rid, (deploy_id, start, end, devices, ended) in spans.items():
            if ended:
                self._open.pop(rid, None)
                if rid in observed:
                    self._closed.add(rid)
            else:
                self._open[rid] = (deploy_id, start, devices, end)
        self.rows_written += len(rows)
        self._count(added, names, models)
        return len(rows)

    def _names(self, s: Session, user_ids: set[int]) -> dict[int, str]:
        if self._gpu_cost is None or not user_ids:
            return {}
        rows = s.execute(select(User.id, User.username).where(User.id.in_(user_ids)))
        return {id: name for id, name in rows}

    def _model_names(self, s: Session, deploy_ids: set[str]) -> dict[str, str]:
        """deploy_id -> its model_name (deleted ones too: a replica may outlive its row)."""
        if self._gpu_cost is None or not deploy_ids:
            return {}
        q = select(Deployment.id, Deployment.model_name).where(Deployment.id.in_(deploy_ids))
        return {id: name for id, name in s.execute(q)}

    def _count(
        self,
        added: list[tuple[MeteredDeployment, int, int]],
        names: dict[int, str],
        models: dict[str, str],
    ) -> None:
        if self._gpu_seconds is None or self._gpu_cost is None:
            return
        for dep, gpu_ms, price in added:
            user = names.get(dep.user_id, str(dep.user_id))
            model = models.get(dep.deploy_id)
            model_name = f"{user}/{model}" if model is not None else ""
            labels = (user, dep.deploy_id, model_name, dep.gpu_type)
            self._gpu_seconds.labels(*labels).inc(gpu_ms / 1000)
            self._gpu_cost.labels(*labels).inc(gpu_cost_micros(gpu_ms, price) / MICROS_PER_USD)
