"""Who may do what with a deployment or an adapter: the one rule, over plain values.

Using (inference, naming it as an adapter's base, listing it in `GET /v1/models`): its owner,
everyone when it is public, and admins. Managing (the control plane's get, update, stop, start,
delete, events, logs): its owner and admins; public means usable, not manageable. Anything a
caller may not see answers exactly like something that does not exist.
"""

from __future__ import annotations


def may_use(*, owner_id: int, public: bool, user_id: int, is_admin: bool) -> bool:
    """Whether the caller (`user_id`, `is_admin`) may use a deployment or adapter."""
    return owner_id == user_id or public or is_admin


def may_manage(*, owner_id: int, user_id: int, is_admin: bool) -> bool:
    """Whether the caller may manage (read its details, change, stop, delete) a deployment."""
    return owner_id == user_id or is_admin
