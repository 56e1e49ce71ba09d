"""The control-plane API's shapes (pydantic): request bodies, strict about unknown fields, and
the `*Public` objects the routes answer with (their `response_model`, so OpenAPI documents
them). `api.views` builds the public objects from stored rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelhost.domain.autoscaling import AutoscalingSettings
from modelhost.domain.deployment_config import TokenPricing
from modelhost.domain.deployments import (
    DEFAULT_MAX_ACTIVE_ADAPTERS,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_ACTIVE_ADAPTERS,
    MAX_BATCH_SIZE,
    MAX_ENGINE_ARGS,
    MAX_GPU_LIMIT,
    MAX_NUM_GPUS,
    MAX_PRELOADED_ADAPTERS,
)
from modelhost.domain.money import parse_micros
from modelhost.domain.rate_limits import RateLimits
from modelhost.domain.spending import validate_alert_at

# ---- request bodies ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUser(_Strict):
    username: str
    gpu_limit: int | None = Field(default=None, ge=0, le=MAX_GPU_LIMIT)
    is_admin: bool = False


class RateLimitsIn(_Strict):
    """Requests and tokens per minute (null: no limit of that kind)."""

    rpm: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm: int | None = Field(default=None, ge=1, le=10_000_000_000)

    def to_limits(self) -> RateLimits | None:
        limits = RateLimits(self.rpm, self.tpm)
        return limits if limits.any else None


class CreateToken(_Strict):
    name: str = Field(min_length=1, max_length=128)
    # This token's own limits, counted for its requests alone (besides the user's).
    rate_limits: RateLimitsIn | None = None


class UpdateUser(_Strict):
    """An admin's changes to a user (absent: unchanged; `rate_limits: null` removes them)."""

    gpu_limit: int | None = Field(default=None, ge=0, le=MAX_GPU_LIMIT)
    rate_limits: RateLimitsIn | None = None


class SpendingLimitIn(_Strict):
    """`usd_per_month`: a decimal string of USD (null: no limit of the user's own); `alert_at`:
    fractions of the limit at which an alert is sent (absent: unchanged)."""

    usd_per_month: str | None = Field(max_length=32)
    alert_at: list[float] | None = Field(default=None, max_length=10)

    @field_validator("usd_per_month")
    @classmethod
    def _money(cls, value: str | None) -> str | None:
        return None if value is None else PricingIn._money(value)

    @field_validator("alert_at")
    @classmethod
    def _fractions(cls, value: list[float] | None) -> list[float] | None:
        return None if value is None else list(validate_alert_at(value))


class AdminSpendingLimitIn(SpendingLimitIn):
    """An admin may also cap what the user may set (`max_usd_per_month`; null: no cap)."""

    usd_per_month: str | None = Field(default=None, max_length=32)
    max_usd_per_month: str | None = Field(default=None, max_length=32)

    @field_validator("max_usd_per_month")
    @classmethod
    def _cap(cls, value: str | None) -> str | None:
        return None if value is None else PricingIn._money(value)


class HFWeights(_Strict):
    repo: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
    revision: str | None = Field(default=None, max_length=128)
    token: str | None = Field(default=None, max_length=512)


class LocalWeights(_Strict):
    path: str = Field(min_length=1, max_length=4096)


class PricingIn(_Strict):
    """Per-token prices (USD per 1M tokens, decimal strings: `"0.200000"`) for callers other
    than the owner."""

    usd_per_1m_prompt_tokens: str = Field(max_length=32)
    usd_per_1m_completion_tokens: str = Field(max_length=32)

    @field_validator("usd_per_1m_prompt_tokens", "usd_per_1m_completion_tokens")
    @classmethod
    def _money(cls, value: str) -> str:
        try:
            micros = parse_micros(value)
        except ValueError:
            raise ValueError(
                'must be a decimal string of USD with at most 6 decimals, e.g. "0.200000"'
            ) from None
        if micros < 0:
            raise ValueError("must not be negative")
        return value

    def to_pricing(self) -> TokenPricing:
        return TokenPricing(
            parse_micros(self.usd_per_1m_prompt_tokens),
            parse_micros(self.usd_per_1m_completion_tokens),
        )


class CreateLLM(_Strict):
    model_name: str
    gpu: str
    num_gpus: int = Field(default=1, ge=1, le=MAX_NUM_GPUS)
    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    hf: HFWeights | None = None
    local: LocalWeights | None = None
    base_model: str | None = None
    engine: str = "auto"
    engine_args: list[str] = Field(default_factory=list, max_length=MAX_ENGINE_ARGS)
    # DeepInfra's name for engine_args.
    extra_args: list[str] | None = Field(default=None, max_length=MAX_ENGINE_ARGS)
    # DeepInfra accepts a container image; modelhost runs its own engines, so only null is valid.
    container_image: None = None
    settings: dict[str, Any] | None = None
    public: bool = False
    # Per-token prices charged to callers other than the owner (public deployments).
    pricing: PricingIn | None = None
    # Requests and tokens per minute for each caller other than the owner.
    rate_limits: RateLimitsIn | None = None
    # Multi-LoRA: adapters (`<username>/<name>` or your own bare names) loaded at replica start,
    # and how many may be resident per replica at once.
    preloaded_adapters: list[str] = Field(default_factory=list, max_length=MAX_PRELOADED_ADAPTERS)
    max_active_adapters: int = Field(
        default=DEFAULT_MAX_ACTIVE_ADAPTERS, ge=1, le=MAX_ACTIVE_ADAPTERS
    )
    # The weights' quantization method (vLLM's names: awq, gptq, fp8, ...); engine vllm only.
    quantization: str | None = Field(default=None, min_length=1, max_length=32)


class HFUpdate(_Strict):
    revision: str | None = Field(default=None, max_length=128)
    token: str | None = Field(default=None, max_length=512)


class ConfigUpdate(_Strict):
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    engine_args: list[str] | None = Field(default=None, max_length=MAX_ENGINE_ARGS)
    hf: HFUpdate | None = None
    preloaded_adapters: list[str] | None = Field(default=None, max_length=MAX_PRELOADED_ADAPTERS)
    max_active_adapters: int | None = Field(default=None, ge=1, le=MAX_ACTIVE_ADAPTERS)


class UpdateDeployment(_Strict):
    settings: dict[str, Any] | None = None
    config: ConfigUpdate | None = None
    public: bool | None = None
    # Per-token prices; `null` removes them (absent: unchanged). Applied live, no new generation.
    pricing: PricingIn | None = None
    # Rate limits for callers other than the owner; as `pricing`: live, `null` removes them.
    rate_limits: RateLimitsIn | None = None


class AdapterSource(_Strict):
    hf: HFWeights | None = None
    local: LocalWeights | None = None


class CreateAdapter(_Strict):
    name: str
    base: str = Field(description="<username>/<deployment>")
    source: AdapterSource
    public: bool = False


# ---- answers ----------------------------------------------------------------------------------
# Fields without a default are always present. The one-of objects (`weights`, an adapter's
# `source`) hold only the key that applies: the routes answering with them serialize with
# `response_model_exclude_unset`, and the views set just that key.


class HFWeightsPublic(BaseModel):
    repo: str
    revision: str | None
    token: Literal["***"] | None = Field(
        description='"***" when a token is set (the token itself is never returned), else null'
    )


class LocalWeightsPublic(BaseModel):
    path: str


class CatalogWeightsPublic(BaseModel):
    name: str


class WeightsPublic(BaseModel):
    """One of `hf`, `local` or `base_model`; none for the simulator engine."""

    hf: HFWeightsPublic | None = None
    local: LocalWeightsPublic | None = None
    base_model: CatalogWeightsPublic | None = None


class DeploymentConfigPublic(BaseModel):
    gpu: str
    num_gpus: int
    max_batch_size: int
    engine: str
    engine_args: list[str]
    weights: WeightsPublic
    preloaded_adapters: list[str]
    max_active_adapters: int
    quantization: str | None = Field(
        default=None,
        description="the weights' quantization method (engine vllm), or null",
    )


class InstancesPublic(BaseModel):
    running: int
    pending: int


class AutoscalingPublic(BaseModel):
    desired_replicas: int
    reason: str | None
    pending_reason: str | None


class RateLimitsPublic(BaseModel):
    rpm: int | None
    tpm: int | None


class PricingPublic(BaseModel):
    usd_per_1m_prompt_tokens: str
    usd_per_1m_completion_tokens: str


class DeploymentPublic(BaseModel):
    """The deploy object."""

    deploy_id: str
    model_name: str = Field(description="<username>/<model_name>")
    type: Literal["llm"]
    status: str
    fail_reason: str | None
    created_at: str
    updated_at: str
    instances: InstancesPublic
    config: DeploymentConfigPublic
    settings: AutoscalingSettings
    public: bool
    pricing: PricingPublic | None = Field(
        default=None,
        description="per-token prices for callers other than the owner; absent when none",
    )
    rate_limits: RateLimitsPublic | None = Field(
        default=None,
        description="requests and tokens per minute for callers other than the owner; "
        "absent when none",
    )
    autoscaling: AutoscalingPublic


class DeployIdPublic(BaseModel):
    deploy_id: str


class UserPublic(BaseModel):
    username: str
    is_admin: bool
    gpu_limit: int
    created_at: str
    rate_limits: RateLimitsPublic | None = None


class UserCreatedPublic(UserPublic):
    token: str = Field(description="the user's first API token, shown this once")


class UsersPublic(BaseModel):
    users: list[UserPublic]


class UserDeletedPublic(BaseModel):
    username: str


class MePublic(BaseModel):
    username: str
    is_admin: bool
    gpu_limit: int
    gpus_reserved: int


class TokenPublic(BaseModel):
    token_id: str
    name: str
    prefix: str
    created_at: str
    last_used_at: str | None
    rate_limits: RateLimitsPublic | None = None


class TokenCreatedPublic(TokenPublic):
    token: str = Field(description="the token, shown this once")


class TokenRevokedPublic(BaseModel):
    token_id: str


class EventPublic(BaseModel):
    id: int
    ts: str
    kind: str
    message: str
    data: dict[str, Any]


class EventsPublic(BaseModel):
    events: list[EventPublic]


class LogEntryPublic(BaseModel):
    ts: str | None
    replica: str
    line: str


class LogsPublic(BaseModel):
    entries: list[LogEntryPublic]


class GpuPublic(BaseModel):
    gpu: str
    total: int
    available: int
    usd_per_hour: float
    virtual: bool


class GpuAvailabilityPublic(BaseModel):
    gpus: list[GpuPublic]


class CatalogModelPublic(BaseModel):
    name: str
    description: str
    available: bool


class CatalogPublic(BaseModel):
    models: list[CatalogModelPublic]


class AdapterSourcePublic(BaseModel):
    """One of `hf` or `local`."""

    hf: HFWeightsPublic | None = None
    local: LocalWeightsPublic | None = None


class AdapterPublic(BaseModel):
    """The adapter object."""

    adapter_id: str
    name: str = Field(description="<username>/<name>")
    base: str = Field(description="the base deployment's <username>/<model_name>")
    base_deploy_id: str
    source: AdapterSourcePublic
    rank: int
    target_modules: list[str]
    public: bool
    size_bytes: int
    created_at: str


class AdaptersPublic(BaseModel):
    adapters: list[AdapterPublic]


class AdapterDeletedPublic(BaseModel):
    adapter_id: str
    name: str


# ---- usage and invoices (money: decimal strings with 6 decimals, never floats) ----------------


class UsageRowPublic(BaseModel):
    key: str = Field(
        description="the deploy_id, the day YYYY-MM-DD, the GPU type, the token_id or "
        '<username>/<adapter>, by group_by; "-" for what the grouping cannot attribute '
        "(GPU time under api_token or adapter, requests without either)"
    )
    name: str = Field(description="<username>/<model_name> for a deployment, else readable key")
    gpu_seconds: float = Field(description="seconds a replica ran x its num_gpus (ms precision)")
    gpu_cost: str
    prompt_tokens: int
    completion_tokens: int
    token_cost: str
    total_cost: str


class UsagePublic(BaseModel):
    start: str
    end: str
    rows: list[UsageRowPublic]
    total_cost: str


class InvoiceSummaryPublic(BaseModel):
    invoice_id: str
    period_start: str
    period_end: str
    status: Literal["open", "final"] = Field(
        description="open: the current week, updated live; final: a closed week, never changes"
    )
    total: str


class InvoicesPublic(BaseModel):
    invoices: list[InvoiceSummaryPublic]


class InvoiceLinePublic(BaseModel):
    description: str
    deploy_id: str | None
    gpu: str | None = Field(description="the GPU type of a GPU-time line; null for tokens")
    quantity: str = Field(description="in units, 6 decimals")
    unit: Literal["GPU-hour", "1M tokens"]
    unit_price: str = Field(description="USD per unit (tokens: the line's average rate)")
    amount: str


class InvoicePublic(InvoiceSummaryPublic):
    user: str = Field(description="the invoiced user's username")
    currency: Literal["USD"] = "USD"
    lines: list[InvoiceLinePublic]


class SpendAlertPublic(BaseModel):
    fraction: float
    at: str
    spent: str
    limit: str


class SpendingLimitPublic(BaseModel):
    usd_per_month: str | None = Field(description="the user's own limit (null: none)")
    max_usd_per_month: str | None = Field(description="an admin's cap on it (null: none)")
    effective_usd_per_month: str | None = Field(
        description="what is enforced: the lower of the two (null: no limit)"
    )
    alert_at: list[float]
    month: str = Field(description="the calendar month (UTC) the figures are for: YYYY-MM")
    spent: str = Field(description="spent this month: GPU time plus tokens on priced endpoints")
    remaining: str | None
    reached: bool = Field(description="new requests are refused and deployments stopped")
    alerts: list[SpendAlertPublic] = Field(description="alerts sent this month")


# ---- metric history (GET /v1/deployments/{deploy_id}/metrics) ---------------------------------

MetricPoint = tuple[int, float | None]


class MetricSeriesPublic(BaseModel):
    """Each series: `[t, value]` pairs, `t` the bucket's start in unix seconds, oldest first;
    `null` where nothing was observed (the server was down, the deployment not running, no
    request to time, no GPU reading)."""

    requests_per_s: list[MetricPoint] = Field(description="forwarded requests per second")
    tokens_per_s: list[MetricPoint] = Field(description="generated tokens per second")
    inference_time_p50_s: list[MetricPoint] = Field(
        description="median seconds from a request's arrival to its last byte, queue excluded"
    )
    inference_time_p95_s: list[MetricPoint] = Field(description="95th percentile of the same")
    queue_time_s: list[MetricPoint] = Field(
        description="mean seconds requests waited in the gateway for a replica slot"
    )
    replicas: list[MetricPoint] = Field(description="ready replicas (mean over the bucket)")
    gpu_utilization: list[MetricPoint] = Field(
        description="0..1, mean over the ready replicas; see gpu_utilization_source"
    )


class DeploymentMetricsPublic(BaseModel):
    deploy_id: str
    adapter: str | None = Field(
        default=None,
        description="the adapter the request, token and time series are for (replicas and "
        "GPU utilisation are its base deployment's)",
    )
    window: Literal["1h", "24h", "7d"]
    resolution_s: int = Field(description="seconds per point")
    start: int = Field(description="the first bucket's start (unix seconds)")
    end: int = Field(description="the last bucket's end (unix seconds)")
    series: MetricSeriesPublic
    gpu_utilization_source: Literal["nvml", "engine_busy"] | None = Field(
        description="`nvml`: the replicas' NVIDIA GPUs as NVML reports them; `engine_busy`: "
        "CPU or virtual-GPU replicas, the share of time their engine had a request in flight; "
        "null: unknown"
    )
