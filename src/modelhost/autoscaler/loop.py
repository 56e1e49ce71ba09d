"""The autoscaler loop: applies the policy to every autoscaled deployment once per tick.

`Autoscaler.run_once(now)` lists the deployments to scale, reads each one's load, runs the pure
policy with the state it kept from the last tick, and hands the result to the scale target, which
persists the desired count and records an event when it changed. The three collaborators are
protocols so the loop is tested with fakes and the control plane supplies the real ones (store,
gateway counters + replica /stats, orchestrator). Policy state lives here, in memory: after a
restart the policy starts from fresh windows and treats the restart as its last scale-up, so it
can't scale down on a half-empty window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelhost.autoscaler import policy
from modelhost.autoscaler.policy import LoadSignals, ScalingContext, ScalingDecision
from modelhost.domain.autoscaling import AutoscalingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoscaledDeployment:
    """What the loop needs to know about one deployment (one that is not stopped/deleted)."""

    deploy_id: str
    settings: AutoscalingSettings
    max_batch_size: int
    # Ready + starting replicas (not draining), and the ready ones among them.
    current_replicas: int
    ready_replicas: int
    # The most replicas this deployment may have under the owner's quota, counting the ones it
    # already holds. Free capacity is not a bound: what does not fit waits as pending.
    placeable_max: int
    last_request_at: float | None
    # Which limit sets placeable_max when it binds: "capacity" or "quota".
    placeable_limit: str = "capacity"
    # Of current_replicas, the wanted ones the orchestrator could not place (pending).
    unplaced: int = 0


class DeploymentSource(Protocol):
    def autoscaled_deployments(self) -> Sequence[AutoscaledDeployment]: ...


class SignalSource(Protocol):
    def signals(self, deploy_id: str) -> LoadSignals: ...


class ScaleTarget(Protocol):
    def set_desired(self, deploy_id: str, desired: int, decision: ScalingDecision) -> None: ...


@dataclass(frozen=True)
class AppliedDecision:
    deploy_id: str
    decision: ScalingDecision
    # The desired count this loop set last time (None on the first decision it makes).
    previous_desired: int | None

    @property
    def changed(self) -> bool:
        return self.previous_desired != self.decision.desired


# A policy: modelhost.autoscaler.policy.decide, or kpa.decide for comparison.
PolicyFn = Callable[[ScalingContext, Any], tuple[ScalingDecision, Any]]


class Autoscaler:
    def __init__(
        self,
        deployments: DeploymentSource,
        signals: SignalSource,
        target: ScaleTarget,
        decide: PolicyFn = policy.decide,
        initial_state: Callable[[], Any] = policy.PolicyState,
    ) -> None:
        self._deployments = deployments
        self._signals = signals
        self._target = target
        self._decide = decide
        self._initial_state = initial_state
        self._states: dict[str, Any] = {}
        self._desired: dict[str, int] = {}
        self.errors = 0

    def run_once(self, now: float) -> list[AppliedDecision]:
        """One decision for every autoscaled deployment. A failure on one deployment is logged
        and counted and does not stop the others."""
        deployments = self._deployments.autoscaled_deployments()
        applied: list[AppliedDecision] = []
        for deployment in deployments:
            try:
                applied.append(self._decide_one(deployment, now))
            except Exception:
                self.errors += 1
                log.exception("autoscaling %s failed", deployment.deploy_id)
        # Forget deployments that are gone (deleted, stopped), so a re-created id starts fresh.
        listed = {d.deploy_id for d in deployments}
        for deploy_id in set(self._states) - listed:
            del self._states[deploy_id]
            self._desired.pop(deploy_id, None)
        return applied

    def _decide_one(self, deployment: AutoscaledDeployment, now: float) -> AppliedDecision:
        context = ScalingContext(
            now=now,
            settings=deployment.settings,
            max_batch_size=deployment.max_batch_size,
            current_replicas=deployment.current_replicas,
            ready_replicas=deployment.ready_replicas,
            signals=self._signals.signals(deployment.deploy_id),
            placeable_max=deployment.placeable_max,
            last_request_at=deployment.last_request_at,
            placeable_limit=deployment.placeable_limit,
            unplaced=deployment.unplaced,
        )
        state = self._states.get(deployment.deploy_id)
        if state is None:
            state = self._initial_state()
        decision, new_state = self._decide(context, state)
        # Persist first: if the target fails, the state is not advanced, and the next tick
        # decides again from the same windows instead of believing a scale-up happened.
        self._target.set_desired(deployment.deploy_id, decision.desired, decision)
        self._states[deployment.deploy_id] = new_state
        previous = self._desired.get(deployment.deploy_id)
        self._desired[deployment.deploy_id] = decision.desired
        return AppliedDecision(deployment.deploy_id, decision, previous)
