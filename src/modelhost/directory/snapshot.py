"""One immutable view of who may call what: live API tokens (by hash) with their principals, and
the live deployments and adapters by id and by `<username>/<name>`.

Built whole from rows (`load.py`) and swapped in as one object, so a request reads one
consistent view without locks, database sessions or thread hops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from modelhost.domain.deployment_config import TokenPricing
from modelhost.domain.rate_limits import RateLimits
from modelhost.store.users import Principal


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    username: str
    is_admin: bool
    gpu_limit: int
    deleted: bool
    rate_limits: RateLimits | None = None
    # The enforced monthly spending limit (the lower of the user's and the admin's cap).
    spend_limit_micros: int | None = None


@dataclass(frozen=True, slots=True)
class TokenRow:
    token_hash: str
    id: str
    user_id: int
    last_used_at: datetime | None
    rate_limits: RateLimits | None = None


@dataclass(frozen=True, slots=True)
class DeploymentEntry:
    """A deployment that is not deleted, with what the gateway decides on."""

    id: str
    owner_id: int
    owner: str  # the owner's username
    model_name: str
    public: bool
    desired_state: str
    status: str
    fail_reason: str | None
    pending_reason: str | None
    created_at: datetime
    # Per-token prices for callers other than the owner (the config's `pricing`), or None.
    pricing: TokenPricing | None = None
    # Rate limits for callers other than the owner (the config's `rate_limits`), or None.
    rate_limits: RateLimits | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.model_name}"


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    """An adapter that is not deleted, on a base deployment that is not deleted either."""

    id: str
    owner_id: int
    owner: str
    name: str
    base_deploy_id: str
    public: bool

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class Snapshot:
    def __init__(
        self,
        revision: int,
        users: Iterable[UserRow] = (),
        tokens: Iterable[TokenRow] = (),
        deployments: Iterable[DeploymentEntry] = (),
        adapters: Iterable[AdapterEntry] = (),
    ) -> None:
        self.revision = revision
        live = {u.id: u for u in users if not u.deleted}
        # Principals are built once per load, so authenticating is one dict lookup.
        self._principals: dict[str, Principal] = {}
        for t in tokens:
            user = live.get(t.user_id)
            if user is not None:
                self._principals[t.token_hash] = Principal(
                    user.id,
                    user.username,
                    user.is_admin,
                    user.gpu_limit,
                    t.id,
                    t.last_used_at,
                    rate_limits=user.rate_limits,
                    token_rate_limits=t.rate_limits,
                    spend_limit_micros=user.spend_limit_micros,
                )
        self._deployments: dict[str, DeploymentEntry] = {d.id: d for d in deployments}
        # By name only under an owner that is not deleted (as the store's find_by_name).
        self._deployments_by_name: dict[tuple[str, str], DeploymentEntry] = {
            (d.owner, d.model_name): d for d in self._deployments.values() if d.owner_id in live
        }
        self._adapters_by_name: dict[tuple[str, str], AdapterEntry] = {
            (a.owner, a.name): a
            for a in adapters
            if a.owner_id in live and a.base_deploy_id in self._deployments
        }

    def principal(self, token_hash: str) -> Principal | None:
        return self._principals.get(token_hash)

    def deployment(self, deploy_id: str) -> DeploymentEntry | None:
        return self._deployments.get(deploy_id)

    def deployment_named(self, username: str, model_name: str) -> DeploymentEntry | None:
        return self._deployments_by_name.get((username, model_name))

    def adapter_named(self, username: str, name: str) -> AdapterEntry | None:
        return self._adapters_by_name.get((username, name))

    def deployments(self) -> Mapping[str, DeploymentEntry]:
        return self._deployments

    def counts(self) -> dict[str, int]:
        return {
            "tokens": len(self._principals),
            "deployments": len(self._deployments),
            "adapters": len(self._adapters_by_name),
        }
