"""A deployment's config, typed: what its replicas are launched with.

The store keeps it as JSON in `deployments.config` (the shape `to_json` writes, which the deploy
object's `config` shows); `from_json` is the one place that reads that JSON, and the store calls
it (`store.deployments.config_of`), so every other module reads typed fields. A change to any of
these fields is a new generation: the reconciler replaces the replicas one by one, except
`pricing`, which is billing only: it applies live (the gateway's directory reads it) and no
replica is replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelhost.domain.deployments import DEFAULT_MAX_ACTIVE_ADAPTERS, QuotaItem
from modelhost.domain.rate_limits import RateLimits


@dataclass(frozen=True)
class HfWeights:
    """A Hugging Face repository (the token is never part of the config: it is stored
    encrypted beside it)."""

    repo: str
    revision: str | None


@dataclass(frozen=True)
class LocalWeights:
    """A model folder or a .gguf file on the server."""

    path: str


@dataclass(frozen=True)
class CatalogWeights:
    """A model of the server's catalog (`base_model`)."""

    name: str


# None: no weights (the simulator engine).
Weights = HfWeights | LocalWeights | CatalogWeights | None


@dataclass(frozen=True)
class TokenPricing:
    """Per-token prices a deployment charges callers other than its owner, in integer
    micro-dollars per 1M tokens (stored as such: `{"prompt_micros_per_1m",
    "completion_micros_per_1m"}`)."""

    prompt_micros_per_1m: int
    completion_micros_per_1m: int

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TokenPricing:
        return cls(int(raw["prompt_micros_per_1m"]), int(raw["completion_micros_per_1m"]))

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_micros_per_1m": self.prompt_micros_per_1m,
            "completion_micros_per_1m": self.completion_micros_per_1m,
        }


def pricing_from_json(raw: object) -> TokenPricing | None:
    """The `pricing` of a stored config (absent or null: none)."""
    return TokenPricing.from_json(raw) if isinstance(raw, Mapping) else None


@dataclass(frozen=True)
class DeploymentConfig:
    gpu: str
    num_gpus: int
    max_batch_size: int
    engine: str
    engine_args: tuple[str, ...] = ()
    weights: Weights = None
    # Adapters loaded at replica start (`<username>/<name>`, or bare names of the owner's).
    preloaded_adapters: tuple[str, ...] = ()
    max_active_adapters: int = DEFAULT_MAX_ACTIVE_ADAPTERS
    # The weights' quantization method for engines that serve quantized weights (vLLM's names:
    # awq, gptq, fp8, ...); None: whatever the weights are.
    quantization: str | None = None
    # Per-token prices for callers other than the owner; None: no token charge. Not part of
    # what replicas run: a change is no new generation.
    pricing: TokenPricing | None = None
    # Rate limits for callers other than the owner; billing-like: applies live, no new
    # generation.
    rate_limits: RateLimits | None = None

    def quota_item(self, max_instances: int) -> QuotaItem:
        """What this deployment reserves of its owner's GPU quota at `max_instances`."""
        return QuotaItem(self.gpu, self.num_gpus, max_instances)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DeploymentConfig:
        """Read the stored JSON. Keys that rows written before a field existed lack take the
        field's default."""
        return cls(
            gpu=str(raw["gpu"]),
            num_gpus=int(raw["num_gpus"]),
            max_batch_size=int(raw["max_batch_size"]),
            engine=str(raw["engine"]),
            engine_args=tuple(str(a) for a in raw.get("engine_args", ())),
            weights=_weights_from_json(raw.get("weights") or {}),
            preloaded_adapters=tuple(str(n) for n in raw.get("preloaded_adapters", ())),
            max_active_adapters=int(raw.get("max_active_adapters", DEFAULT_MAX_ACTIVE_ADAPTERS)),
            quantization=str(quant) if (quant := raw.get("quantization")) is not None else None,
            pricing=pricing_from_json(raw.get("pricing")),
            rate_limits=RateLimits.from_json(raw.get("rate_limits")),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored JSON (and the deploy object's `config`, less the HF token marker)."""
        out: dict[str, Any] = {
            "gpu": self.gpu,
            "num_gpus": self.num_gpus,
            "max_batch_size": self.max_batch_size,
            "engine": self.engine,
            "engine_args": list(self.engine_args),
            "weights": weights_to_json(self.weights),
            "preloaded_adapters": list(self.preloaded_adapters),
            "max_active_adapters": self.max_active_adapters,
            "quantization": self.quantization,
        }
        if self.pricing is not None:  # absent when none: older rows read the same
            out["pricing"] = self.pricing.to_json()
        if self.rate_limits is not None:
            out["rate_limits"] = self.rate_limits.to_json()
        return out


def _weights_from_json(raw: Mapping[str, Any]) -> Weights:
    if "hf" in raw:
        hf = raw["hf"]
        revision = hf.get("revision")
        return HfWeights(str(hf["repo"]), str(revision) if revision is not None else None)
    if "local" in raw:
        return LocalWeights(str(raw["local"]["path"]))
    if "base_model" in raw:
        return CatalogWeights(str(raw["base_model"]["name"]))
    return None


def weights_to_json(weights: Weights) -> dict[str, Any]:
    """`{"hf": {"repo", "revision"}}`, `{"local": {"path"}}`, `{"base_model": {"name"}}` or
    `{}`."""
    if isinstance(weights, HfWeights):
        return {"hf": {"repo": weights.repo, "revision": weights.revision}}
    if isinstance(weights, LocalWeights):
        return {"local": {"path": weights.path}}
    if isinstance(weights, CatalogWeights):
        return {"base_model": {"name": weights.name}}
    return {}
