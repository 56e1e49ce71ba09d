"""Users and their API tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhost.domain.rate_limits import RateLimits
from modelhost.errors import Conflict, NotFound
from modelhost.security.tokens import display_prefix, hash_token, new_id, new_token
from modelhost.store.clock import utcnow
from modelhost.store.tables import ApiToken, User


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: int
    username: str
    is_admin: bool
    gpu_limit: int
    token_id: str
    # The token's stored last_used_at, so recording this use needs no second read.
    token_last_used_at: datetime | None = None
    # What the gateway enforces on this caller (read from the directory; None: no limit): the
    # user's rate limits, the token's own, and the user's monthly spending limit (micros).
    rate_limits: RateLimits | None = None
    token_rate_limits: RateLimits | None = None
    spend_limit_micros: int | None = None


def get_user(s: Session, username: str) -> User:
    user = s.scalar(select(User).where(User.username == username, User.deleted_at.is_(None)))
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


def create_user(s: Session, username: str, gpu_limit: int, is_admin: bool = False) -> User:
    taken = select(User.id).where(User.username == username, User.deleted_at.is_(None))
    if s.scalar(taken) is not None:
        raise Conflict(f"user {username!r} already exists", param="username", code="name_in_use")
    user = User(username=username, is_admin=is_admin, gpu_limit=gpu_limit, created_at=utcnow())
    s.add(user)
    s.flush()
    return user


def issue_token(
    s: Session, user: User, name: str, rate_limits: RateLimits | None = None
) -> tuple[ApiToken, str]:
    """Create a token; the plaintext is returned once and never stored."""
    live = s.scalar(
        select(ApiToken.id).where(
            ApiToken.user_id == user.id, ApiToken.name == name, ApiToken.revoked_at.is_(None)
        )
    )
    if live is not None:
        raise Conflict(f"a token named {name!r} already exists", param="name", code="name_in_use")
    plaintext = new_token()
    row = ApiToken(
        id=new_id("tok_"),
        user_id=user.id,
        name=name,
        token_hash=hash_token(plaintext),
        prefix=display_prefix(plaintext),
        created_at=utcnow(),
        rate_limits=rate_limits.to_json() if rate_limits is not None else None,
    )
    s.add(row)
    s.flush()
    return row, plaintext


def install_token(s: Session, user: User, name: str, plaintext: str) -> None:
    """Register a token chosen by the operator (MODELHOST_ADMIN_TOKEN), idempotently."""
    digest = hash_token(plaintext)
    if s.scalar(select(ApiToken.id).where(ApiToken.token_hash == digest)) is not None:
        return
    s.add(
        ApiToken(
            id=new_id("tok_"),
            user_id=user.id,
            name=f"{name}-{new_id()[:6]}",
            token_hash=digest,
            prefix=display_prefix(plaintext),
            created_at=utcnow(),
        )
    )


def authenticate(s: Session, plaintext: str) -> Principal | None:
    row = s.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(
            ApiToken.token_hash == hash_token(plaintext),
            ApiToken.revoked_at.is_(None),
            User.deleted_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    token, user = row
    return Principal(
        user.id, user.username, user.is_admin, user.gpu_limit, token.id, token.last_used_at
    )


def list_tokens(s: Session, user_id: int) -> list[ApiToken]:
    return list(
        s.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at)
        )
    )


def revoke_token(s: Session, user_id: int, token_id: str) -> None:
    token = s.get(ApiToken, token_id)
    if token is None or token.user_id != user_id or token.revoked_at is not None:
        raise NotFound(f"token {token_id!r} not found")
    token.revoked_at = utcnow()


def list_users(s: Session) -> list[User]:
    return list(s.scalars(select(User).where(User.deleted_at.is_(None)).order_by(User.id)))


def delete_user(s: Session, user: User) -> None:
    """Soft-delete: the row stays for the history of its deployments; its tokens stop working
    at once and the name is free again. The caller deletes the user's deployments."""
    now = utcnow()
    user.deleted_at = now
    for token in list_tokens(s, user.id):
        token.revoked_at = now
