"""The per-user CPU-slot limit (modelhost.domain.fair_share), issue 9 item 10."""

from __future__ import annotations

import pytest

from modelhost.domain.fair_share import cpu_quota_error, cpu_slots_per_user, owner_cpu_limit


@pytest.mark.parametrize(
    ("cpu_slots", "configured", "limit"),
    [
        # Half the slots, rounded up: one user can never hold them all (with 2 slots: 1 each).
        (1, None, 1),
        (2, None, 1),
        (3, None, 2),
        (4, None, 2),
        (5, None, 3),
        (0, None, 1),
        # Configured: as set (equal to --cpu-slots turns the share off).
        (4, 4, 4),
        (4, 1, 1),
        (4, -1, 0),
    ],
)
def test_cpu_slots_per_user(cpu_slots: int, configured: int | None, limit: int) -> None:
    assert cpu_slots_per_user(cpu_slots, configured) == limit


def test_admins_are_not_limited() -> None:
    assert owner_cpu_limit(is_admin=True, per_user=1) is None
    assert owner_cpu_limit(is_admin=False, per_user=1) == 1


@pytest.mark.parametrize(
    ("min_instances", "limit", "refused"),
    [(1, 1, False), (2, 1, True), (0, 0, False), (1, 0, True), (8, None, False)],
)
def test_cpu_quota_error_only_for_a_floor_that_can_never_run(
    min_instances: int, limit: int | None, refused: bool
) -> None:
    message = cpu_quota_error(min_instances, limit)
    assert (message is not None) is refused
    if message is not None:
        assert f"min_instances {min_instances}" in message and "cpu_slots_per_user" in message
