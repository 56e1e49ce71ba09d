"""spending limits and rate limits: per-user limits and alerts, per-token rate limits, and the
deployments a spending limit stopped

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 00:00:00

The gateway's directory reads the new user and token columns (the limits it enforces), so the
directory triggers are recreated with them (as 0006 did for `deployments.config`).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BUMP = "UPDATE directory_revision SET value = value + 1 WHERE id = 1"
_USERS_BEFORE = ["username", "is_admin", "gpu_limit", "deleted_at"]
_USERS_AFTER = [*_USERS_BEFORE, "rate_limits", "spend_limit_micros", "spend_cap_micros"]
_TOKENS_BEFORE = ["user_id", "token_hash", "revoked_at"]
_TOKENS_AFTER = [*_TOKENS_BEFORE, "rate_limits"]


def _recreate(table: str, columns: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_directory ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_directory AFTER INSERT OR DELETE OR UPDATE OF "
            f"{', '.join(columns)} ON {table} FOR EACH STATEMENT "
            "EXECUTE FUNCTION directory_bump()"
        )
        return
    # SQLite: only the update trigger names columns; insert and delete stay as they are.
    op.execute(f"DROP TRIGGER IF EXISTS {table}_directory_update")
    op.execute(
        f"CREATE TRIGGER {table}_directory_update AFTER UPDATE OF "
        f"{', '.join(columns)} ON {table} BEGIN {BUMP}; END"
    )


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("rate_limits", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("spend_limit_micros", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("spend_cap_micros", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("spend_alert_at", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("rate_limits", sa.JSON(), nullable=True))
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("stopped_by", sa.String(length=32), nullable=True))
    op.create_table(
        "spend_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("fraction", sa.String(length=16), nullable=False),
        sa.Column("spent_micros", sa.BigInteger(), nullable=False),
        sa.Column("limit_micros", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "month", "fraction", name="uq_spend_alerts_once"),
    )
    _recreate("users", _USERS_AFTER)
    _recreate("api_tokens", _TOKENS_AFTER)


def downgrade() -> None:
    _recreate("users", _USERS_BEFORE)
    _recreate("api_tokens", _TOKENS_BEFORE)
    op.drop_table("spend_alerts")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("stopped_by")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("rate_limits")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("spend_alert_at")
        batch.drop_column("spend_cap_micros")
        batch.drop_column("spend_limit_micros")
        batch.drop_column("rate_limits")
