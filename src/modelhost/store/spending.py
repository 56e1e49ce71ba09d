"""What users spent in a month, their spending limits and the alerts sent (see
domain/spending.py for the rules)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelhost.domain.spending import DEFAULT_ALERT_AT, SpendingLimit, month_start
from modelhost.domain.status import DesiredState
from modelhost.store.tables import Deployment, GpuUsage, RequestUsage, SpendAlert, User

# `deployments.stopped_by` of a deployment the owner's spending limit stopped.
BY_SPENDING_LIMIT = "spending_limit"


def gpu_cost_by_user(
    s: Session, since: datetime, user_ids: Collection[int] | None = None
) -> dict[int, int]:
    """GPU cost (micros) per user of periods starting at or after `since`; only `user_ids`'
    when given."""
    if user_ids is not None and not user_ids:
        return {}
    q = select(GpuUsage.user_id, func.sum(GpuUsage.cost_micros)).where(
        GpuUsage.period_start >= since
    )
    if user_ids is not None:
        q = q.where(GpuUsage.user_id.in_(user_ids))
    return {int(u): int(total or 0) for u, total in s.execute(q.group_by(GpuUsage.user_id))}


def token_cost_by_user(
    s: Session, since: datetime, user_ids: Collection[int] | None = None
) -> dict[int, int]:
    """What each user paid for tokens (micros) in requests at or after `since`; only
    `user_ids`' when given."""
    if user_ids is not None and not user_ids:
        return {}
    q = select(RequestUsage.user_id, func.sum(RequestUsage.cost_micros)).where(
        RequestUsage.at >= since, RequestUsage.cost_micros > 0
    )
    if user_ids is not None:
        q = q.where(RequestUsage.user_id.in_(user_ids))
    return {int(u): int(total or 0) for u, total in s.execute(q.group_by(RequestUsage.user_id))}


def spent_by_user(
    s: Session, now: datetime, user_ids: Collection[int] | None = None
) -> dict[int, int]:
    """Each user's spend this calendar month (UTC), GPU time and tokens (two queries); only
    `user_ids`' when given."""
    since = month_start(now)
    out = gpu_cost_by_user(s, since, user_ids)
    for user_id, micros in token_cost_by_user(s, since, user_ids).items():
        out[user_id] = out.get(user_id, 0) + micros
    return out


def month_spent(s: Session, user_id: int, now: datetime) -> int:
    """The user's spend this calendar month (UTC) as the database holds it."""
    return spent_by_user(s, now, [user_id]).get(user_id, 0)


def limit_of(user: User) -> SpendingLimit:
    alert_at = tuple(float(a) for a in user.spend_alert_at) if user.spend_alert_at else None
    return SpendingLimit(
        user.spend_limit_micros,
        user.spend_cap_micros,
        alert_at if alert_at is not None else DEFAULT_ALERT_AT,
    )


def limited_users(s: Session) -> list[User]:
    """Live users with a limit or a cap, and users whose deployments a limit stopped."""
    stopped = select(Deployment.owner_id).where(Deployment.stopped_by == BY_SPENDING_LIMIT)
    q = select(User).where(
        User.deleted_at.is_(None),
        (User.spend_limit_micros.is_not(None))
        | (User.spend_cap_micros.is_not(None))
        | User.id.in_(stopped),
    )
    return list(s.scalars(q))


def alerts_sent(s: Session, user_id: int, month: str) -> list[SpendAlert]:
    q = (
        select(SpendAlert)
        .where(SpendAlert.user_id == user_id, SpendAlert.month == month)
        .order_by(SpendAlert.id)
    )
    return list(s.scalars(q))


def running_deployments(s: Session, owner_id: int) -> list[Deployment]:
    q = select(Deployment).where(
        Deployment.owner_id == owner_id,
        Deployment.deleted_at.is_(None),
        Deployment.desired_state == DesiredState.RUNNING.value,
    )
    return list(s.scalars(q))


def stopped_by_limit(s: Session, owner_id: int) -> Sequence[Deployment]:
    q = select(Deployment).where(
        Deployment.owner_id == owner_id,
        Deployment.deleted_at.is_(None),
        Deployment.stopped_by == BY_SPENDING_LIMIT,
    )
    return list(s.scalars(q))
