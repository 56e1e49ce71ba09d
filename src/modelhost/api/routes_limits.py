"""Spending limits: the caller's own (`/v1/me/spending-limit`) and, for admins, any user's,
with a cap the user cannot set above (see domain/spending.py for the rules)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from modelhost.api.deps import AdminDep, PrincipalDep, ServicesDep
from modelhost.api.schemas import (
    AdminSpendingLimitIn,
    SpendAlertPublic,
    SpendingLimitIn,
    SpendingLimitPublic,
)
from modelhost.domain.money import format_micros, parse_micros
from modelhost.domain.spending import month_of
from modelhost.errors import SpendingLimitReached, ValidationFailed
from modelhost.store import spending as store
from modelhost.store import users as users_store
from modelhost.store.clock import iso, utcnow
from modelhost.store.tables import User
from modelhost.web.openapi import errors

router = APIRouter()
ADMIN = {403: "the caller is not an admin (`admin_only`)"}


def _money(micros: int | None) -> str | None:
    return None if micros is None else format_micros(micros)


def spending_view(s: Session, user: User) -> SpendingLimitPublic:
    now = utcnow()
    month = month_of(now)
    limit = store.limit_of(user)
    effective = limit.effective_micros
    spent = store.month_spent(s, user.id, now)
    return SpendingLimitPublic(
        usd_per_month=_money(limit.limit_micros),
        max_usd_per_month=_money(limit.cap_micros),
        effective_usd_per_month=_money(effective),
        alert_at=list(limit.alert_at),
        month=month,
        spent=format_micros(spent),
        remaining=None if effective is None else format_micros(max(0, effective - spent)),
        reached=effective is not None and spent >= effective,
        alerts=[
            SpendAlertPublic(
                fraction=float(a.fraction),
                at=iso(a.at),
                spent=format_micros(a.spent_micros),
                limit=format_micros(a.limit_micros),
            )
            for a in store.alerts_sent(s, user.id, month)
        ],
    )


def check_not_reached(s: Session, user_id: int) -> None:
    """Refuse (402) starting or creating a deployment while its owner's limit is reached."""
    user = s.get(User, user_id)
    if user is None:
        return
    effective = store.limit_of(user).effective_micros
    if effective is None:
        return
    now = utcnow()
    spent = store.month_spent(s, user_id, now)
    if spent >= effective:
        raise SpendingLimitReached(
            f"spending limit of {format_micros(effective)} USD for {month_of(now)} reached "
            f"(spent {format_micros(spent)} USD); raise it with PUT /v1/me/spending-limit"
        )


def _apply(user: User, body: SpendingLimitIn) -> None:
    if "usd_per_month" in body.model_fields_set:
        user.spend_limit_micros = (
            parse_micros(body.usd_per_month) if body.usd_per_month is not None else None
        )
    if body.alert_at is not None:
        user.spend_alert_at = list(body.alert_at)


@router.get("/v1/me/spending-limit")
def my_spending_limit(who: PrincipalDep, services: ServicesDep) -> SpendingLimitPublic:
    with services.db.session() as s:
        return spending_view(s, users_store.get_user(s, who.username))


@router.put("/v1/me/spending-limit", responses=errors(422))
def set_my_spending_limit(
    body: SpendingLimitIn, who: PrincipalDep, services: ServicesDep
) -> SpendingLimitPublic:
    """Set your monthly limit (`null`: none of your own) and alert fractions. Under an
    admin's cap, a limit above it, or none, is refused."""
    with services.db.session() as s:
        user = users_store.get_user(s, who.username)
        cap = user.spend_cap_micros
        if cap is not None and "usd_per_month" in body.model_fields_set:
            wanted = parse_micros(body.usd_per_month) if body.usd_per_month is not None else None
            if wanted is None or wanted > cap:
                raise ValidationFailed(
                    f"an admin capped your spending limit at {format_micros(cap)} USD a month; "
                    "set a limit at or below it",
                    param="usd_per_month",
                    code="over_spending_cap",
                )
        _apply(user, body)
        s.flush()
        view = spending_view(s, user)
    services.notify()
    return view


@router.get("/v1/users/{username}/spending-limit", responses=errors(403, 404, notes=ADMIN))
def user_spending_limit(
    username: str, admin: AdminDep, services: ServicesDep
) -> SpendingLimitPublic:
    with services.db.session() as s:
        return spending_view(s, users_store.get_user(s, username))


@router.put("/v1/users/{username}/spending-limit", responses=errors(403, 404, 422, notes=ADMIN))
def set_user_spending_limit(
    username: str, body: AdminSpendingLimitIn, admin: AdminDep, services: ServicesDep
) -> SpendingLimitPublic:
    """An admin sets a user's limit and/or the cap on what the user may set themselves."""
    with services.db.session() as s:
        user = users_store.get_user(s, username)
        _apply(user, body)
        if "max_usd_per_month" in body.model_fields_set:
            cap = body.max_usd_per_month
            user.spend_cap_micros = parse_micros(cap) if cap is not None else None
        s.flush()
        view = spending_view(s, user)
    services.notify()
    return view
