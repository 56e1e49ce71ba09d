"""Database tables (SQLAlchemy 2.0 declarative). Schema changes go through Alembic migrations
in `store/migrations/versions`; this module and the latest migration must agree (a test checks).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelhost.domain.status import DeploymentStatus


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index(
            "uq_users_username_live",
            "username",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    gpu_limit: Mapped[int] = mapped_column(Integer, default=4)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # domain.rate_limits.RateLimits as JSON (set by an admin), or None.
    rate_limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The monthly spending limit (the user's own word) and an admin's cap on it, in micros.
    spend_limit_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spend_cap_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spend_alert_at: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    # SHA-256 of the whole token: tokens are high-entropy, so a fast hash is adequate.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # This token's own rate limits (domain.rate_limits.RateLimits as JSON), or None.
    rate_limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # A name is unique among the owner's deployments that are not deleted.
        Index(
            "uq_deployments_owner_name_live",
            "owner_id",
            "model_name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    # running | stopped | deleted: what the owner asked for.
    desired_state: Mapped[str] = mapped_column(String(16))
    # domain.deployment_config.DeploymentConfig as JSON (the HF token is never stored here),
    # and domain.autoscaling.AutoscalingSettings as JSON; read them with
    # store.deployments.config_of and settings_of.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    hf_token_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Bumped on each config change that needs a rolling replacement.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # The autoscaler's current target.
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    scale_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Written by the reconciler alone (the API shows the owner's stop or delete at once, see
    # store.deployments.shown_status); a new deployment is pending until its first pass.
    status: Mapped[str] = mapped_column(String(16), default=DeploymentStatus.PENDING.value)
    fail_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    instances_running: Mapped[int] = mapped_column(Integer, default=0)
    instances_pending: Mapped[int] = mapped_column(Integer, default=0)
    pending_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "spending_limit" when the owner's spending limit stopped it (started again when the
    # limit is raised or the month turns); None when the owner's own word decides.
    stopped_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # When a request last waited for a replica of it, on any server process (the activator's
    # stamp): the leader's autoscaler counts it as a request (migration 0010).
    demand_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Replica(Base):
    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deploy_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    generation: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    devices: Mapped[list[Any]] = mapped_column(JSON)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    proc_start_time: Mapped[str | None] = mapped_column(String(32), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fail_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The runtime it runs (the resolved `engine`) and the address its engine listens on (None:
    # 127.0.0.1): other server processes route from this row.
    engine: Mapped[str | None] = mapped_column(String(32), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deploy_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Adapter(Base):
    """A LoRA adapter registered on a base deployment; its files live under
    `<data_dir>/adapters/<id>/` where every replica of the base can load them."""

    __tablename__ = "adapters"
    __table_args__ = (
        Index(
            "uq_adapters_owner_name_live",
            "owner_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    base_deploy_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    # {"hf": {"repo", "revision"}} or {"local": {"path"}}; the token is never stored here.
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    hf_token_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list[Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DirectoryRevision(Base):
    """One row (id 1) whose `value` the database's own triggers bump (migration 0003) in every
    transaction that changes what the gateway's in-memory directory mirrors: users, API tokens
    (not their last use), deployments' identity, visibility and status, adapters. Each server
    process polls it to know when to reload (`directory/`): a counter rather than timestamps, so
    clock skew between hosts and deleted rows cannot hide a change."""

    __tablename__ = "directory_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class SpendAlert(Base):
    """A spending alert sent: one per user, month and fraction of the limit."""

    __tablename__ = "spend_alerts"
    __table_args__ = (
        UniqueConstraint("user_id", "month", "fraction", name="uq_spend_alerts_once"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    month: Mapped[str] = mapped_column(String(7))  # "2026-11"
    fraction: Mapped[str] = mapped_column(String(16))  # as written: "0.8"
    spent_micros: Mapped[int] = mapped_column(BigInteger)
    limit_micros: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GpuUsage(Base):
    """GPU time of one replica in one period (aligned to the UTC minute): written by the GPU
    meter (serve/gpu_meter.py), rewritten only upward, so re-metering never double-counts."""

    __tablename__ = "gpu_usage"
    __table_args__ = (
        UniqueConstraint("replica_id", "period_start", name="uq_gpu_usage_replica_period"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replica_id: Mapped[str] = mapped_column(String(64))
    deploy_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    gpu_type: Mapped[str] = mapped_column(String(64))
    num_gpus: Mapped[int] = mapped_column(Integer)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Milliseconds the replica ran within the period x num_gpus.
    gpu_ms: Mapped[int] = mapped_column(BigInteger)
    # The GPU type's price per GPU-hour when the period was first written (kept after).
    usd_per_hour_micros: Mapped[int] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger)


class RequestUsage(Base):
    """Tokens of one inference request (one row per client request, however many times the
    gateway retried it), read from the engine's usage."""

    __tablename__ = "request_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    api_token_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deploy_id: Mapped[str] = mapped_column(String(64), index=True)
    adapter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class MetricHistory(Base):
    """One deployment's (adapter_id "") or one adapter's health in one time bucket of one
    resolution (domain/metric_history.py: every column adds up, so samples and processes
    merge into a row by adding). Written by the metric sampler (serve/metric_sampler.py), 10 s
    rows kept 6 h and 1 min rows kept 7 days; read by GET /v1/deployments/{id}/metrics."""

    __tablename__ = "metric_history"
    __table_args__ = (
        UniqueConstraint(
            "deploy_id", "adapter_id", "resolution_s", "bucket_start", name="uq_metric_history"
        ),
        Index("ix_metric_history_expiry", "resolution_s", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deploy_id: Mapped[str] = mapped_column(String(64))
    adapter_id: Mapped[str] = mapped_column(String(64), default="")
    resolution_s: Mapped[int] = mapped_column(Integer)
    bucket_start: Mapped[int] = mapped_column(BigInteger)  # epoch seconds
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    inference_count: Mapped[int] = mapped_column(BigInteger, default=0)
    inference_sum_s: Mapped[float] = mapped_column(default=0.0)
    # Sparse histogram over domain.metric_history.LATENCY_BOUNDS: {"bucket index": count}.
    inference_hist: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queue_count: Mapped[int] = mapped_column(BigInteger, default=0)
    queue_sum_s: Mapped[float] = mapped_column(default=0.0)
    replicas_sum: Mapped[float] = mapped_column(default=0.0)
    replica_samples: Mapped[int] = mapped_column(Integer, default=0)
    gpu_util_sum: Mapped[float] = mapped_column(default=0.0)
    gpu_util_samples: Mapped[int] = mapped_column(Integer, default=0)
    gpu_source: Mapped[str | None] = mapped_column(String(16), nullable=True)


class LeaderLease(Base):
    """Who runs the control loops among the server processes on this database (issue 14):
    taken and renewed by one conditional UPDATE, times by the database's clock (epoch seconds);
    store/leases.py, domain/leader_lease.py."""

    __tablename__ = "leader_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    expires_at: Mapped[float] = mapped_column(Double)
    acquired_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    # Bumped each time the lease changes hands.
    term: Mapped[int] = mapped_column(Integer, default=0)
