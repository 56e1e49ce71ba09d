"""deployments.demand_at: when a request last waited for a replica of the deployment, on any
server process

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 00:00:00

With several servers on one database, a request held on a follower (no ready replica) is
invisible to the leader's autoscaler, which could scale the replica started for it back to zero
before the follower routes it. Every process now stamps `demand_at` when a request arrives at
zero ready replicas and again while requests stay held; the leader counts it as a request.
Not a column the gateway's directory mirrors (no trigger change).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("demand_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("demand_at")
