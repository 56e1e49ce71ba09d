"""From stored rows to the public objects the API answers with (`api.schemas`): the deploy object
of the contract, users, tokens, events, adapters."""

from __future__ import annotations

from typing import overload

from modelhost.api.schemas import (
    AdapterPublic,
    AdapterSourcePublic,
    AutoscalingPublic,
    CatalogWeightsPublic,
    DeploymentConfigPublic,
    DeploymentPublic,
    EventPublic,
    HFWeightsPublic,
    InstancesPublic,
    LocalWeightsPublic,
    PricingPublic,
    RateLimitsPublic,
    TokenCreatedPublic,
    TokenPublic,
    UserCreatedPublic,
    UserPublic,
    WeightsPublic,
)
from modelhost.domain.deployment_config import (
    CatalogWeights,
    HfWeights,
    LocalWeights,
    TokenPricing,
    Weights,
)
from modelhost.domain.money import format_micros
from modelhost.domain.rate_limits import RateLimits
from modelhost.store.clock import iso
from modelhost.store.deployments import config_of, settings_of, shown_status
from modelhost.store.tables import Adapter, ApiToken, Deployment, Event, User


def _token_marker(token_enc: bytes | None) -> str | None:
    # The token itself is never returned; "***" tells the owner one is set.
    return "***" if token_enc else None


def _weights(weights: Weights, token_enc: bytes | None) -> WeightsPublic:
    # Only the key that applies is set (the routes serialize with exclude_unset).
    if isinstance(weights, HfWeights):
        hf = HFWeightsPublic(
            repo=weights.repo, revision=weights.revision, token=_token_marker(token_enc)
        )
        return WeightsPublic(hf=hf)
    if isinstance(weights, LocalWeights):
        return WeightsPublic(local=LocalWeightsPublic(path=weights.path))
    if isinstance(weights, CatalogWeights):
        return WeightsPublic(base_model=CatalogWeightsPublic(name=weights.name))
    return WeightsPublic()


def _pricing(pricing: TokenPricing) -> PricingPublic:
    return PricingPublic(
        usd_per_1m_prompt_tokens=format_micros(pricing.prompt_micros_per_1m),
        usd_per_1m_completion_tokens=format_micros(pricing.completion_micros_per_1m),
    )


def deploy_object(dep: Deployment, owner: str) -> DeploymentPublic:
    config = config_of(dep)
    return DeploymentPublic(
        deploy_id=dep.id,
        model_name=f"{owner}/{dep.model_name}",
        type="llm",
        status=shown_status(dep),
        fail_reason=dep.fail_reason,
        created_at=iso(dep.created_at),
        updated_at=iso(dep.updated_at),
        instances=InstancesPublic(running=dep.instances_running, pending=dep.instances_pending),
        config=DeploymentConfigPublic(
            gpu=config.gpu,
            num_gpus=config.num_gpus,
            max_batch_size=config.max_batch_size,
            engine=config.engine,
            engine_args=list(config.engine_args),
            weights=_weights(config.weights, dep.hf_token_enc),
            preloaded_adapters=list(config.preloaded_adapters),
            max_active_adapters=config.max_active_adapters,
            # Shown only when set (the deploy object leaves unset fields out).
            **({"quantization": config.quantization} if config.quantization else {}),
        ),
        settings=settings_of(dep),
        public=dep.public,
        **({"pricing": _pricing(config.pricing)} if config.pricing is not None else {}),
        **(
            {"rate_limits": rate_limits_object(config.rate_limits)}
            if config.rate_limits is not None
            else {}
        ),
        autoscaling=AutoscalingPublic(
            desired_replicas=dep.desired_replicas,
            reason=dep.scale_reason,
            pending_reason=dep.pending_reason,
        ),
    )


def user_object(user: User) -> UserPublic:
    return UserPublic(
        username=user.username,
        is_admin=user.is_admin,
        gpu_limit=user.gpu_limit,
        created_at=iso(user.created_at),
        rate_limits=rate_limits_object(RateLimits.from_json(user.rate_limits)),
    )


def created_user_object(user: User, token: str) -> UserCreatedPublic:
    return UserCreatedPublic(**user_object(user).model_dump(), token=token)


def token_object(tok: ApiToken) -> TokenPublic:
    return TokenPublic(
        token_id=tok.id,
        name=tok.name,
        prefix=tok.prefix,
        created_at=iso(tok.created_at),
        last_used_at=iso(tok.last_used_at),
        rate_limits=rate_limits_object(RateLimits.from_json(tok.rate_limits)),
    )


@overload
def rate_limits_object(limits: RateLimits) -> RateLimitsPublic: ...
@overload
def rate_limits_object(limits: None) -> None: ...
@overload
def rate_limits_object(limits: RateLimits | None) -> RateLimitsPublic | None: ...
def rate_limits_object(limits: RateLimits | None) -> RateLimitsPublic | None:
    return None if limits is None else RateLimitsPublic(rpm=limits.rpm, tpm=limits.tpm)


def created_token_object(tok: ApiToken, plaintext: str) -> TokenCreatedPublic:
    return TokenCreatedPublic(**token_object(tok).model_dump(), token=plaintext)


def event_object(ev: Event) -> EventPublic:
    return EventPublic(id=ev.id, ts=iso(ev.ts), kind=ev.kind, message=ev.message, data=ev.data)


def adapter_object(a: Adapter, owner: str, base_name: str) -> AdapterPublic:
    # {"hf": {"repo", "revision"}} or {"local": {"path"}}, as registration stores it.
    if "hf" in a.source:
        hf = a.source["hf"]
        source = AdapterSourcePublic(
            hf=HFWeightsPublic(
                repo=hf["repo"], revision=hf.get("revision"), token=_token_marker(a.hf_token_enc)
            )
        )
    else:
        source = AdapterSourcePublic(local=LocalWeightsPublic(path=a.source["local"]["path"]))
    return AdapterPublic(
        adapter_id=a.id,
        name=f"{owner}/{a.name}",
        base=base_name,
        base_deploy_id=a.base_deploy_id,
        source=source,
        rank=a.rank,
        target_modules=list(a.target_modules),
        public=a.public,
        size_bytes=a.size_bytes,
        created_at=iso(a.created_at),
    )
