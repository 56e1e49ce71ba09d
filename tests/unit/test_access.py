"""The one access rule (`domain.access`), as a table, and the places that apply it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelhost.directory.snapshot import DeploymentEntry, Snapshot
from modelhost.domain.access import may_manage, may_use
from modelhost.gateway.resolve import resolve_model, visible_models
from modelhost.store.users import Principal

OWNER, OTHER = 1, 2

# (owner_id, public, caller's user_id, caller is admin) -> may use, may manage
TABLE = [
    ("owner, private", OWNER, False, OWNER, False, True, True),
    ("owner, public", OWNER, True, OWNER, False, True, True),
    ("someone else, private", OWNER, False, OTHER, False, False, False),
    ("someone else, public", OWNER, True, OTHER, False, True, False),
    ("admin, private", OWNER, False, OTHER, True, True, True),
    ("admin, public", OWNER, True, OTHER, True, True, True),
    ("admin owner", OWNER, False, OWNER, True, True, True),
]


@pytest.mark.parametrize(
    ("owner_id", "public", "user_id", "is_admin", "use", "manage"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_the_rule(
    owner_id: int, public: bool, user_id: int, is_admin: bool, use: bool, manage: bool
) -> None:
    assert may_use(owner_id=owner_id, public=public, user_id=user_id, is_admin=is_admin) is use
    assert may_manage(owner_id=owner_id, user_id=user_id, is_admin=is_admin) is manage


def _entry(deploy_id: str, owner_id: int, owner: str, public: bool) -> DeploymentEntry:
    return DeploymentEntry(
        id=deploy_id,
        owner_id=owner_id,
        owner=owner,
        model_name=deploy_id,
        public=public,
        desired_state="running",
        status="ready",
        fail_reason=None,
        pending_reason=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _who(user_id: int, username: str, is_admin: bool = False) -> Principal:
    return Principal(user_id, username, is_admin, 4, "tok")


SNAP = Snapshot(
    1,
    deployments=[
        _entry("mine", OWNER, "alice", False),
        _entry("open", OTHER, "bob", True),
        _entry("closed", OTHER, "bob", False),
    ],
)


@pytest.mark.parametrize(
    ("who", "listed"),
    [
        (_who(OWNER, "alice"), {"mine", "open"}),
        (_who(OTHER, "bob"), {"open", "closed"}),
        (_who(3, "carol"), {"open"}),
        (_who(3, "root", is_admin=True), {"mine", "open", "closed"}),
    ],
    ids=["owner", "other owner", "stranger", "admin"],
)
def test_models_lists_what_the_caller_may_use(who: Principal, listed: set[str]) -> None:
    assert {d.id for d in visible_models(SNAP, who)} == listed
    # ... which is what the caller can call by id.
    usable = {d for d in ("mine", "open", "closed") if resolve_model(SNAP, who, f"deploy_id:{d}")}
    assert usable == listed
