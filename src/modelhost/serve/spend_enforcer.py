"""The spending limit's control loop: at each pass (the reconcile interval), for every user with
a limit, what they spent this month (the database's figures: GPU time to the last metering
checkpoint, tokens to the last second) against it.

- At or over the limit: the user's running deployments are stopped (`stopped_by`
  "spending_limit", `fail_reason` says why, an event records it); the reconciler drains their
  replicas at its next pass. (The gateway refuses the user's requests by itself, at once.)
- Under it again (the limit raised, or a new month): the deployments it stopped start again.
- Each `alert_at` fraction reached is recorded once per month, as an event on the user's
  deployments, a log line and, with MODELHOST_ALERT_WEBHOOK, a JSON POST.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelhost.domain.money import format_micros
from modelhost.domain.spending import alerts_due, month_of
from modelhost.domain.status import DesiredState
from modelhost.store import deployments as deployments_store
from modelhost.store import spending as store
from modelhost.store.clock import iso, utcnow
from modelhost.store.db import Database
from modelhost.store.deployments import settings_of
from modelhost.store.tables import SpendAlert, User

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0


def limit_reached_reason(limit: int, spent: int, month: str) -> str:
    return (
        f"spending limit of {format_micros(limit)} USD for {month} reached (spent "
        f"{format_micros(spent)} USD); raise it with PUT /v1/me/spending-limit to start again"
    )


class SpendEnforcer:
    def __init__(
        self,
        db: Database,
        notify: Callable[[], None],
        webhook: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        post: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._db = db
        self._notify = notify
        self._webhook = webhook
        self._clock = clock
        self._post = post or _post_json

    def run_once(self) -> None:
        """One pass (blocking: run it in a thread)."""
        now = self._clock()
        month = month_of(now)
        messages: list[dict[str, Any]] = []
        changed = False
        with self._db.session() as s:
            users = store.limited_users(s)
            spent_by_user = store.spent_by_user(s, now, [u.id for u in users])
            for user in users:
                limit = store.limit_of(user)
                effective = limit.effective_micros
                spent = spent_by_user.get(user.id, 0)
                if effective is not None and spent >= effective:
                    if self._stop(s, user, effective, spent, month):
                        changed = True
                        messages.append(
                            _message("limit_reached", user, month, spent, effective, None)
                        )
                elif self._restart(s, user, month):
                    changed = True
                if effective is not None:
                    messages += self._alerts(s, user, limit.alert_at, effective, spent, month, now)
        if changed:
            self._notify()
        for message in messages:
            log.warning(
                "spending: user %s %s (%s of %s USD, %s)",
                message["username"],
                message["event"],
                message["spent"],
                message["limit"],
                month,
            )
            if self._webhook:
                self._post(self._webhook, message)

    def _stop(self, s: Session, user: User, limit: int, spent: int, month: str) -> bool:
        running = store.running_deployments(s, user.id)
        reason = limit_reached_reason(limit, spent, month)
        for dep in running:
            dep.desired_state = DesiredState.STOPPED.value
            dep.stopped_by = store.BY_SPENDING_LIMIT
            dep.fail_reason = reason
            dep.updated_at = utcnow()
            deployments_store.add_event(s, dep.id, "spending_limit", f"stopped: {reason}")
        return bool(running)

    def _restart(self, s: Session, user: User, month: str) -> bool:
        stopped = store.stopped_by_limit(s, user.id)
        for dep in stopped:
            dep.desired_state = DesiredState.RUNNING.value
            dep.stopped_by = None
            dep.fail_reason = None
            dep.desired_replicas = settings_of(dep).min_instances
            dep.updated_at = utcnow()
            deployments_store.add_event(
                s,
                dep.id,
                "spending_limit",
                f"started again: spending is under the limit for {month}",
            )
        return bool(stopped)

    def _alerts(
        self,
        s: Session,
        user: User,
        alert_at: tuple[float, ...],
        limit: int,
        spent: int,
        month: str,
        now: datetime,
    ) -> list[dict[str, Any]]:
        sent = [float(a.fraction) for a in store.alerts_sent(s, user.id, month)]
        out: list[dict[str, Any]] = []
        for fraction in alerts_due(spent, limit, alert_at, sent):
            try:
                with s.begin_nested():
                    s.add(
                        SpendAlert(
                            user_id=user.id,
                            month=month,
                            fraction=str(fraction),
                            spent_micros=spent,
                            limit_micros=limit,
                            at=now,
                        )
                    )
            except IntegrityError:
                continue  # another server process sent it
            text = (
                f"spending alert: {fraction:.0%} of the {format_micros(limit)} USD limit for "
                f"{month} reached (spent {format_micros(spent)} USD)"
            )
            for dep in deployments_store.list_by_owner(s, user.id):
                deployments_store.add_event(s, dep.id, "spending_alert", text)
            out.append(_message("alert", user, month, spent, limit, fraction))
        return out


def _message(
    event: str, user: User, month: str, spent: int, limit: int, fraction: float | None
) -> dict[str, Any]:
    return {
        "event": event,
        "username": user.username,
        "month": month,
        "spent": format_micros(spent),
        "limit": format_micros(limit),
        "fraction": fraction,
        "at": iso(utcnow()),
    }


def _post_json(url: str, message: dict[str, Any]) -> None:
    try:
        httpx.post(url, json=message, timeout=WEBHOOK_TIMEOUT_S).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("spending alert webhook failed: %s", type(exc).__name__)
