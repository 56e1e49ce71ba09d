"""drop deployments.last_request_at: never written (the autoscaler reads the last request's time
from the gateway's in-memory pool)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 00:00:00

A plain ALTER TABLE ... DROP COLUMN, also on SQLite (3.35+): a batch (copy-and-rename) migration
would drop the directory-revision triggers of migration 0003 along with the old table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("deployments", "last_request_at")


def downgrade() -> None:
    op.add_column("deployments", sa.Column("last_request_at", sa.Float(), nullable=True))
