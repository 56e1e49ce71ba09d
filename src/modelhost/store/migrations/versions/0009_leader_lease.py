"""leader lease: one control-plane process at a time runs the loops; replicas name their engine

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 04:30:00

Several `modelhost serve` processes on one database (issue 14): the `leader_lease` row says
which one runs the reconciler and the autoscaler (store/leases.py); the others route from the
`replicas` rows, which now name the engine each replica runs (the gateway speaks to each engine
in its own way) and the address it listens on (a Ray node's; NULL: 127.0.0.1). No change to
the tables the directory-revision triggers (0003) watch.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leader_lease",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=True),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        "INSERT INTO leader_lease (name, holder, expires_at, acquired_at, term) "
        "VALUES ('control-plane', NULL, 0, NULL, 0)"
    )
    op.add_column("replicas", sa.Column("engine", sa.String(length=32), nullable=True))
    op.add_column("replicas", sa.Column("host", sa.String(length=255), nullable=True))


def downgrade() -> None:
    op.drop_column("replicas", "host")
    op.drop_column("replicas", "engine")
    op.drop_table("leader_lease")
