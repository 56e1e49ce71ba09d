"""Typed views of the API's JSON objects, as returned by `modelhost.Client`.

Every model keeps unknown fields (`extra="allow"`, reachable via `.model_extra` or
`model_dump()`), so a newer server that adds fields never breaks an older SDK, and the CLI can
show whatever a server sends (e.g. the deploy object's `autoscaling` details).
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

# Statuses in which a deployment is still on its way somewhere (mirrors
# modelhost.domain.status.UNSETTLED; the SDK must not import server code).
UNSETTLED_STATUSES = frozenset({"pending", "initializing", "updating"})


class _Obj(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---- limits: rate limits (requests and tokens per minute) and per-token prices -------------


class RateLimits(_Obj):
    """Requests and tokens per minute (None: no limit of that kind), on a deployment (for each
    caller other than the owner), a user (over all their requests) or an API token."""

    rpm: int | None = None
    tpm: int | None = None

    def __str__(self) -> str:
        parts = [f"{self.rpm} rpm" if self.rpm is not None else ""]
        parts.append(f"{self.tpm} tpm" if self.tpm is not None else "")
        return ", ".join(p for p in parts if p) or "none"


def _refuse_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("money must be a decimal string or a Decimal, never a float")
    return value


class Pricing(_Obj):
    """Per-token prices of a deployment for callers other than the owner: USD per 1M tokens."""

    usd_per_1m_prompt_tokens: Decimal
    usd_per_1m_completion_tokens: Decimal

    _no_float = field_validator(
        "usd_per_1m_prompt_tokens", "usd_per_1m_completion_tokens", mode="before"
    )(_refuse_float)


class SpendAlert(_Obj):
    """An alert sent this month: `fraction` of `limit` was reached (`spent` then)."""

    fraction: float
    at: datetime | None = None
    spent: Decimal = Decimal(0)
    limit: Decimal = Decimal(0)


class SpendingLimit(_Obj):
    """A user's monthly spending limit and this month's spend (money as `Decimal`).

    `usd_per_month` is the user's own limit, `max_usd_per_month` an admin's cap on it (None:
    none) and `effective_usd_per_month` the one enforced (the lower; None: no limit). When
    `reached`, inference and deployment starts are refused (402) and deployments stop."""

    usd_per_month: Decimal | None = None
    max_usd_per_month: Decimal | None = None
    effective_usd_per_month: Decimal | None = None
    alert_at: list[float] = Field(default_factory=list)
    month: str = ""
    spent: Decimal = Decimal(0)
    remaining: Decimal | None = None
    reached: bool = False
    alerts: list[SpendAlert] = Field(default_factory=list)


class Me(_Obj):
    username: str
    is_admin: bool = False
    gpu_limit: int | None = None
    gpus_reserved: int | None = None


class User(_Obj):
    username: str
    is_admin: bool = False
    gpu_limit: int | None = None
    gpus_reserved: int | None = None
    created_at: datetime | None = None
    rate_limits: RateLimits | None = None


class CreatedUser(_Obj):
    """A new user and its first API token (shown once)."""

    username: str
    token: str


class ApiToken(_Obj):
    """An API token. `token` is only set in the answer to `create_token` (shown once)."""

    name: str
    token_id: str | None = Field(default=None, validation_alias=AliasChoices("token_id", "id"))
    token: str | None = None
    prefix: str | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    rate_limits: RateLimits | None = None


class Instances(_Obj):
    running: int = 0
    pending: int = 0


class Deployment(_Obj):
    """The deploy object (DeepInfra's `DeploymentOut` shape)."""

    deploy_id: str
    model_name: str
    type: str = "llm"
    status: str
    fail_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    instances: Instances = Field(default_factory=Instances)
    config: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    public: bool = False
    # Charged to, and limiting, callers other than the owner; None when the server sent none.
    pricing: Pricing | None = None
    rate_limits: RateLimits | None = None

    @property
    def pending_reason(self) -> str | None:
        """Why wanted replicas cannot be placed now (no GPU or CPU slot free, over the user's
        CPU share), from `autoscaling.pending_reason`; None when nothing waits for capacity."""
        autoscaling = (self.model_extra or {}).get("autoscaling")
        reason = autoscaling.get("pending_reason") if isinstance(autoscaling, dict) else None
        return str(reason) if reason else None

    @property
    def settled(self) -> bool:
        """False while the deployment is pending (waiting for capacity included: a replica
        starts by itself once a device frees), initializing or updating."""
        return self.status not in UNSETTLED_STATUSES

    @property
    def full_name(self) -> str:
        """`<username>/<model_name>`: the `model` value for the inference APIs."""
        return self.model_name


class DeployEvent(_Obj):
    """One entry of a deployment's history: a status change, replica start/exit, scaling."""

    ts: datetime | None = Field(
        default=None, validation_alias=AliasChoices("ts", "time", "created_at", "timestamp")
    )
    kind: str | None = Field(default=None, validation_alias=AliasChoices("kind", "type", "event"))
    message: str = Field(default="", validation_alias=AliasChoices("message", "reason", "detail"))
    data: dict[str, Any] = Field(default_factory=dict)


class LogEntry(_Obj):
    """One line of replica output."""

    ts: datetime | None = None
    replica: str | None = None
    line: str = ""

    @field_validator("ts", mode="before")
    @classmethod
    def _lenient_ts(cls, value: Any) -> Any:
        # A timestamp we cannot read must not cost the user the log line itself.
        try:
            return TypeAdapter(datetime | None).validate_python(value)
        except ValidationError:
            return None

    @classmethod
    def from_line(cls, raw: str) -> LogEntry | None:
        """One line of the follow stream: JSON `{"ts","replica","line"}`; plain text is kept as
        the line; a blank line (keep-alive) is None."""
        text = raw.rstrip("\r\n")
        if not text.strip():
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return cls(line=text)
        return cls.model_validate(obj) if isinstance(obj, dict) else cls(line=text)


class GpuType(_Obj):
    gpu: str
    total: int | None = None
    available: int | None = None
    usd_per_hour: float | None = None


class CatalogModel(_Obj):
    """A model the server offers under `base_model`."""

    name: str
    description: str = ""
    available: bool = True


class Adapter(BaseModel):
    """A registered LoRA adapter. `name` is `<owner>/<name>`, `base` the base deployment's."""

    model_config = ConfigDict(extra="allow")

    adapter_id: str
    name: str
    base: str
    base_deploy_id: str | None = None
    source: dict[str, Any] = {}
    rank: int | None = None
    target_modules: list[str] = []
    public: bool = False
    size_bytes: int | None = None
    created_at: datetime | None = None


# ---- usage and invoices: money is `Decimal` (the API sends 6-decimal strings, never floats) ---


class UsageRow(_Obj):
    """One group of `Client.usage()`: `key` is the deploy_id, day, GPU type, token_id or
    `<username>/<adapter>`; "-" for what the grouping cannot attribute."""

    key: str
    name: str = ""
    gpu_seconds: float = 0.0
    gpu_cost: Decimal = Decimal(0)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_cost: Decimal = Decimal(0)
    total_cost: Decimal = Decimal(0)


class Usage(_Obj):
    start: datetime
    end: datetime
    rows: list[UsageRow] = Field(default_factory=list)
    total_cost: Decimal = Decimal(0)


class InvoiceLine(_Obj):
    description: str = ""
    deploy_id: str | None = None
    gpu: str | None = None
    quantity: Decimal = Decimal(0)
    unit: str = ""
    unit_price: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)


class InvoiceSummary(_Obj):
    """A weekly invoice (Monday 00:00 to Monday 00:00 UTC): `open` for the current week (it
    still changes), `final` for a closed one."""

    invoice_id: str
    period_start: datetime
    period_end: datetime
    status: str
    total: Decimal = Decimal(0)


class Invoice(InvoiceSummary):
    user: str | None = None
    currency: str = "USD"
    lines: list[InvoiceLine] = Field(default_factory=list)
