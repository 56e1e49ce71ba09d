"""The autoscaler's view of this server: deployments from the store, load from the gateway
and the replicas' own /stats, and the desired count written back to the store.

This is composition-root code: it is the one place that knows about the store, the gateway
and the orchestrator at once, so that none of those packages imports another.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelhost.autoscaler.loop import AutoscaledDeployment
from modelhost.autoscaler.policy import LoadSignals, ScalingDecision
from modelhost.domain import metric_history as mh
from modelhost.domain.deployment_config import DeploymentConfig
from modelhost.domain.deployments import CPU
from modelhost.domain.replicas import ReplicaState
from modelhost.domain.status import DesiredState
from modelhost.gateway.core import Gateway, GatewaySignals
from modelhost.orchestrator.reconciler import Reconciler
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.serve.services import Services
from modelhost.store import deployments as store
from modelhost.store.tables import Deployment, MetricHistory, User


@dataclass
class AutoscaleGlue:
    services: Services
    gateway: Gateway
    reconciler: Reconciler

    _gateway_view: dict[str, GatewaySignals] = field(default_factory=dict)

    def refresh(self) -> None:
        """Copy the gateway's counters. Call on the event loop, where the gateway lives: the
        decisions then run in a worker thread (they read the store) without touching it."""
        self._gateway_view = {
            p.deploy_id: self.gateway.signals(p.deploy_id) for p in self.gateway.pools()
        }

    def _gw(self, deploy_id: str) -> GatewaySignals:
        return self._gateway_view.get(deploy_id, GatewaySignals(0, 0, 0, None))

    def _observed(self) -> list[ReplicaObservation]:
        return self.reconciler.last_observed

    # ---- DeploymentSource -------------------------------------------------------------------
    def autoscaled_deployments(self) -> Sequence[AutoscaledDeployment]:
        observed = self._observed()
        pending = self.reconciler.last_pending
        out: list[AutoscaledDeployment] = []
        with self.services.db.session() as s:
            elsewhere = requests_seen_since(s, time.time() - mh.TIERS[0].keep_s)
            deps = [
                d
                for d in store.live_deployments(s)
                if d.desired_state == DesiredState.RUNNING.value and d.fail_reason is None
            ]
            for d in deps:
                reps = [o for o in observed if o.deploy_id == d.id]
                live = [o for o in reps if o.state in (ReplicaState.STARTING, ReplicaState.READY)]
                ready = [o for o in live if o.state == ReplicaState.READY]
                # Free capacity does not bound the count: replicas that don't fit are pending
                # (instances.pending, with the reason), so a deployment that wants replicas it
                # can't place never looks like one that wants none.
                settings = store.settings_of(d)
                config = store.config_of(d)
                quota_max = self._quota_max(s, d, config)
                placeable = settings.max_instances if quota_max is None else quota_max
                # What the reconciler could not place, of what it has not started yet (a replica
                # it started since then is starting, and must not be taken for pending).
                unplaced = min(pending.get(d.id, 0), max(0, d.desired_replicas - len(live)))
                pool_signals = self._gw(d.id)
                # Requests other server processes forwarded (several servers on one database)
                # reach this one through the metric history they all write.
                # A request waiting for a replica on any process stamps `demand_at`.
                demanded = epoch(d.demand_at) if d.demand_at is not None else None
                seen_elsewhere = max(
                    (t for t in (elsewhere.get(d.id), demanded) if t is not None), default=None
                )
                last_request_at = latest(pool_signals.last_request_at, seen_elsewhere)
                out.append(
                    AutoscaledDeployment(
                        deploy_id=d.id,
                        settings=settings,
                        max_batch_size=config.max_batch_size,
                        # A replica the store wants but that has not started yet counts: the
                        # policy must not cancel a start it has not seen happen.
                        current_replicas=max(len(live), d.desired_replicas),
                        ready_replicas=len(ready),
                        placeable_max=placeable,
                        last_request_at=last_request_at,
                        placeable_limit="quota",
                        unplaced=unplaced,
                    )
                )
        return out

    def _quota_max(self, s: Session, dep: Deployment, config: DeploymentConfig) -> int | None:
        """Replicas the owner's GPU limit allows this deployment, given the others' reservations."""
        if config.gpu == CPU:
            return None
        owner = s.get(User, dep.owner_id)
        if owner is None:
            return 0
        others = sum(i.gpus for i in store.quota_items(s, dep.owner_id, exclude=dep.id))
        return max(0, (owner.gpu_limit - others) // config.num_gpus)

    # ---- SignalSource -----------------------------------------------------------------------
    def signals(self, deploy_id: str) -> LoadSignals:
        g = self._gw(deploy_id)
        reps = [o for o in self._observed() if o.deploy_id == deploy_id]
        return LoadSignals(
            in_flight=g.in_flight,
            queued=g.queued,
            engine_running=sum(o.running or 0 for o in reps),
            engine_waiting=sum(o.waiting or 0 for o in reps),
            held_cold=g.held,
        )

    # ---- ScaleTarget ------------------------------------------------------------------------
    def set_desired(self, deploy_id: str, desired: int, decision: ScalingDecision) -> None:
        changed = False
        with self.services.db.session() as s:
            dep = s.get(Deployment, deploy_id)
            if dep is None or dep.desired_state != DesiredState.RUNNING.value:
                return
            if dep.desired_replicas != desired:
                store.add_event(
                    s,
                    deploy_id,
                    "scale",
                    f"{decision.reason}",
                    {"from": dep.desired_replicas, "to": desired, "capped_by": decision.capped_by},
                )
                dep.desired_replicas = desired
                changed = True
            dep.scale_reason = decision.reason
        if changed:
            self.services.notify()


def requests_seen_since(s: Session, since: float) -> dict[str, float]:
    """deploy_id -> the start (epoch seconds) of the latest finest-tier metric-history bucket
    in which any server process forwarded a request to it: a lower bound of its last request,
    at most a bucket plus a sampling interval old."""
    rows = s.execute(
        select(MetricHistory.deploy_id, func.max(MetricHistory.bucket_start))
        .where(
            MetricHistory.resolution_s == mh.TIERS[0].resolution_s,
            MetricHistory.bucket_start >= int(since),
            MetricHistory.requests > 0,
        )
        .group_by(MetricHistory.deploy_id)
    ).all()
    return {str(deploy_id): float(start) for deploy_id, start in rows}


def latest(own: float | None, elsewhere_epoch: float | None) -> float | None:
    """The later of this gateway's last request (monotonic) and one seen in the metric history
    (epoch seconds, converted to the monotonic clock)."""
    if elsewhere_epoch is None:
        return own
    seen = monotonic_now() - max(0.0, time.time() - elsewhere_epoch)
    return seen if own is None else max(own, seen)


def epoch(dt: datetime) -> float:
    """A stored UTC timestamp in epoch seconds (SQLite hands back naive datetimes)."""
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


def monotonic_now() -> float:
    """The autoscaler's clock: the same monotonic clock the gateway stamps requests with."""
    return time.monotonic()
