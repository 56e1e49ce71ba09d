"""usage: gpu_usage (GPU time per replica and minute) and request_usage (tokens per request)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 00:00:00

New tables only: no change to the tables the directory-revision triggers (0003) watch.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpu_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("deploy_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("gpu_type", sa.String(length=64), nullable=False),
        sa.Column("num_gpus", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_ms", sa.BigInteger(), nullable=False),
        sa.Column("usd_per_hour_micros", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("replica_id", "period_start", name="uq_gpu_usage_replica_period"),
    )
    op.create_index("ix_gpu_usage_deploy_id", "gpu_usage", ["deploy_id"], unique=False)
    op.create_index("ix_gpu_usage_user_id", "gpu_usage", ["user_id"], unique=False)
    op.create_table(
        "request_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("api_token_id", sa.String(length=64), nullable=True),
        sa.Column("deploy_id", sa.String(length=64), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_request_usage_at", "request_usage", ["at"], unique=False)
    op.create_index("ix_request_usage_user_id", "request_usage", ["user_id"], unique=False)
    op.create_index("ix_request_usage_deploy_id", "request_usage", ["deploy_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_request_usage_deploy_id", table_name="request_usage")
    op.drop_index("ix_request_usage_user_id", table_name="request_usage")
    op.drop_index("ix_request_usage_at", table_name="request_usage")
    op.drop_table("request_usage")
    op.drop_index("ix_gpu_usage_user_id", table_name="gpu_usage")
    op.drop_index("ix_gpu_usage_deploy_id", table_name="gpu_usage")
    op.drop_table("gpu_usage")
