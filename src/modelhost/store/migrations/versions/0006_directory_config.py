"""directory revision: `deployments.config` bumps it too (the directory reads its `pricing`)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 00:00:00

The gateway charges callers per token at the deployment's `pricing`, which lives in the
`config` JSON column; the directory now reads that column, so a change to it must bump the
revision like the other mirrored columns (0003's triggers, recreated with `config` added).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BUMP = "UPDATE directory_revision SET value = value + 1 WHERE id = 1"
_BEFORE = [
    "owner_id",
    "model_name",
    "public",
    "desired_state",
    "status",
    "fail_reason",
    "pending_reason",
    "created_at",
    "deleted_at",
]
_AFTER = [*_BEFORE, "config"]


def _recreate(columns: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS deployments_directory ON deployments")
        op.execute(
            "CREATE TRIGGER deployments_directory AFTER INSERT OR DELETE OR UPDATE OF "
            f"{', '.join(columns)} ON deployments FOR EACH STATEMENT "
            "EXECUTE FUNCTION directory_bump()"
        )
        return
    # SQLite: only the update trigger names columns; insert and delete stay as they are.
    op.execute("DROP TRIGGER IF EXISTS deployments_directory_update")
    op.execute(
        "CREATE TRIGGER deployments_directory_update AFTER UPDATE OF "
        f"{', '.join(columns)} ON deployments BEGIN {BUMP}; END"
    )


def upgrade() -> None:
    _recreate(_AFTER)


def downgrade() -> None:
    _recreate(_BEFORE)
