"""directory revision: a counter bumped by triggers on the rows the gateway mirrors

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:00:00

Every server process keeps users, API tokens, deployments and adapters in memory (the
gateway's directory) and polls `directory_revision.value` to know when to reload. Triggers bump
it, so every writer counts: each server process, whatever code path, and an operator's own SQL.
Only the columns the directory reads fire them (not `last_used_at`, replica counts, settings).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The columns the directory mirrors, per table; inserts and deletes always count.
MIRRORED = {
    "users": ["username", "is_admin", "gpu_limit", "deleted_at"],
    "api_tokens": ["user_id", "token_hash", "revoked_at"],
    "deployments": [
        "owner_id",
        "model_name",
        "public",
        "desired_state",
        "status",
        "fail_reason",
        "pending_reason",
        "created_at",
        "deleted_at",
    ],
    "adapters": ["owner_id", "name", "base_deploy_id", "public", "deleted_at"],
}
BUMP = "UPDATE directory_revision SET value = value + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "directory_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO directory_revision (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        # Per statement: one bump however many rows it touched. The row lock it takes is held
        # to commit, so revisions become visible in order and a reader never misses a change.
        op.execute(
            "CREATE FUNCTION directory_bump() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for table, columns in MIRRORED.items():
            op.execute(
                f"CREATE TRIGGER {table}_directory AFTER INSERT OR DELETE OR UPDATE OF "
                f"{', '.join(columns)} ON {table} FOR EACH STATEMENT "
                "EXECUTE FUNCTION directory_bump()"
            )
        return
    # SQLite: row triggers only; a write transaction holds the database's one write lock.
    for table, columns in MIRRORED.items():
        for name, when in (
            ("insert", "INSERT"),
            ("delete", "DELETE"),
            ("update", f"UPDATE OF {', '.join(columns)}"),
        ):
            op.execute(
                f"CREATE TRIGGER {table}_directory_{name} AFTER {when} ON {table} BEGIN {BUMP}; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in MIRRORED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_directory ON {table}")
        op.execute("DROP FUNCTION IF EXISTS directory_bump()")
    else:
        for table in MIRRORED:
            for name in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_directory_{name}")
    op.drop_table("directory_revision")
