"""Read a whole `Snapshot` from the database: a handful of column-only queries, no ORM objects.

The revision is read first: rows read after it are at least as new, so a change committed in
between is loaded now and seen again (as a new revision) by the next poll, never missed.
"""

from __future__ import annotations

from sqlalchemy import select

from modelhost.directory.snapshot import (
    AdapterEntry,
    DeploymentEntry,
    Snapshot,
    TokenRow,
    UserRow,
)
from modelhost.domain.deployment_config import pricing_from_json
from modelhost.domain.rate_limits import RateLimits
from modelhost.domain.spending import SpendingLimit
from modelhost.store import revision
from modelhost.store.db import Database
from modelhost.store.tables import Adapter, ApiToken, Deployment, User


def load(db: Database) -> Snapshot:
    with db.session() as s:
        rev = revision.read(s)
        users = [
            UserRow(
                row.id,
                row.username,
                bool(row.is_admin),
                int(row.gpu_limit),
                row.deleted_at is not None,
                RateLimits.from_json(row.rate_limits),
                SpendingLimit(row.spend_limit_micros, row.spend_cap_micros).effective_micros,
            )
            for row in s.execute(
                select(
                    User.id,
                    User.username,
                    User.is_admin,
                    User.gpu_limit,
                    User.deleted_at,
                    User.rate_limits,
                    User.spend_limit_micros,
                    User.spend_cap_micros,
                )
            )
        ]
        names = {u.id: u.username for u in users}
        tokens = [
            TokenRow(token_hash, id, user_id, last_used_at, RateLimits.from_json(limits))
            for token_hash, id, user_id, last_used_at, limits in s.execute(
                select(
                    ApiToken.token_hash,
                    ApiToken.id,
                    ApiToken.user_id,
                    ApiToken.last_used_at,
                    ApiToken.rate_limits,
                ).where(ApiToken.revoked_at.is_(None))
            )
        ]
        deployments = [
            DeploymentEntry(
                id=row.id,
                owner_id=row.owner_id,
                owner=names.get(row.owner_id, "?"),
                model_name=row.model_name,
                public=bool(row.public),
                desired_state=row.desired_state,
                status=row.status,
                fail_reason=row.fail_reason,
                pending_reason=row.pending_reason,
                created_at=row.created_at,
                pricing=pricing_from_json((row.config or {}).get("pricing")),
                rate_limits=RateLimits.from_json((row.config or {}).get("rate_limits")),
            )
            for row in s.execute(
                select(
                    Deployment.id,
                    Deployment.owner_id,
                    Deployment.model_name,
                    Deployment.public,
                    Deployment.desired_state,
                    Deployment.status,
                    Deployment.fail_reason,
                    Deployment.pending_reason,
                    Deployment.created_at,
                    Deployment.config,
                )
                .where(Deployment.deleted_at.is_(None))
                .order_by(Deployment.created_at)
            )
        ]
        adapters = [
            AdapterEntry(id, owner_id, names.get(owner_id, "?"), name, base, bool(public))
            for id, owner_id, name, base, public in s.execute(
                select(
                    Adapter.id,
                    Adapter.owner_id,
                    Adapter.name,
                    Adapter.base_deploy_id,
                    Adapter.public,
                ).where(Adapter.deleted_at.is_(None))
            )
        ]
    return Snapshot(rev, users, tokens, deployments, adapters)
