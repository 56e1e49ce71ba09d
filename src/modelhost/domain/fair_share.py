"""How many CPU slots one user's replicas may hold at once, so no tenant can starve the others.

GPUs are shared by a reserved quota (`gpu_limit`, checked when a deployment is created or
scaled). CPU deployments don't count against it, and a server has only a few CPU slots, so they
are shared by a limit on what is *running*: a user's CPU replicas, over all their deployments,
hold at most `cpu_slots_per_user` slots; replicas over it wait as pending with the reason. The
default is half the slots, rounded up: one tenant can never take them all (with 2 slots each
user gets 1), while a user alone on a small server still gets most of it. Admins, the operators
who set the limits (the bootstrap admin also has a 1024-GPU limit), are not limited.
"""

from __future__ import annotations


def cpu_slots_per_user(cpu_slots: int, configured: int | None = None) -> int:
    """The per-user limit: `configured` when set, else half the slots rounded up (at least 1)."""
    if configured is not None:
        return max(configured, 0)
    return max(1, (cpu_slots + 1) // 2)


def owner_cpu_limit(is_admin: bool, per_user: int) -> int | None:
    """The limit that applies to one owner's CPU replicas; None is no limit."""
    return None if is_admin else per_user


def cpu_quota_error(min_instances: int, limit: int | None) -> str | None:
    """Why a CPU deployment can never run its floor under the owner's limit (for a 403 at
    create or update time), or None. Anything above the floor waits as pending instead."""
    if limit is None or min_instances <= limit:
        return None
    return (
        f"min_instances {min_instances} is more CPU replicas than the {limit} CPU slots one user "
        "may hold at once (cpu_slots_per_user)"
    )
