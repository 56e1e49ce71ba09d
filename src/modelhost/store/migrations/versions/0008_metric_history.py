"""metric history: each deployment's and adapter's health series in time buckets

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 00:00:00

A new table only (domain/metric_history.py, serve/metric_sampler.py): no change to the tables
the directory-revision triggers (0003) watch.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deploy_id", sa.String(length=64), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=False),
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("inference_count", sa.BigInteger(), nullable=False),
        sa.Column("inference_sum_s", sa.Double(), nullable=False),
        sa.Column("inference_hist", sa.JSON(), nullable=False),
        sa.Column("queue_count", sa.BigInteger(), nullable=False),
        sa.Column("queue_sum_s", sa.Double(), nullable=False),
        sa.Column("replicas_sum", sa.Double(), nullable=False),
        sa.Column("replica_samples", sa.Integer(), nullable=False),
        sa.Column("gpu_util_sum", sa.Double(), nullable=False),
        sa.Column("gpu_util_samples", sa.Integer(), nullable=False),
        sa.Column("gpu_source", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "deploy_id", "adapter_id", "resolution_s", "bucket_start", name="uq_metric_history"
        ),
    )
    op.create_index(
        "ix_metric_history_expiry", "metric_history", ["resolution_s", "bucket_start"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_metric_history_expiry", table_name="metric_history")
    op.drop_table("metric_history")
