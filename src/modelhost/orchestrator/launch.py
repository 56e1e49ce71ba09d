"""From a stored deployment to what the planner and the backend need to run it."""

from __future__ import annotations

from modelhost.catalog import CatalogModel
from modelhost.domain.deployments import resolve_engine
from modelhost.orchestrator.types import DesiredDeployment, LaunchSpec
from modelhost.security.secretbox import SecretBox
from modelhost.store.tables import Deployment


def launch_spec(
    dep: Deployment,
    owner: str,
    catalog: dict[str, CatalogModel],
    secrets: SecretBox,
) -> LaunchSpec:
    config = dep.config
    weights = config.get("weights", {})
    local = hf_repo = hf_revision = None
    if "local" in weights:
        local = weights["local"]["path"]
    elif "hf" in weights:
        hf_repo = weights["hf"]["repo"]
        hf_revision = weights["hf"].get("revision")
    elif "base_model" in weights:
        model = catalog.get(weights["base_model"]["name"])
        if model is not None:
            local, hf_repo, hf_revision = model.local_path, model.hf_repo, model.hf_revision
    secret_env: dict[str, str] = {}
    if dep.hf_token_enc:
        token = secrets.decrypt(dep.hf_token_enc)
        if token:
            secret_env["HF_TOKEN"] = token
    return LaunchSpec(
        engine=resolve_engine(config["engine"], bool(weights)),
        served_model_name=f"{owner}/{dep.model_name}",
        max_batch_size=int(config["max_batch_size"]),
        weights_local=local,
        weights_hf_repo=hf_repo,
        weights_hf_revision=hf_revision,
        engine_args=tuple(config.get("engine_args", [])),
        secret_env=secret_env,
        gpu_type=config["gpu"],
        num_gpus=int(config["num_gpus"]),
    )


def desired_deployment(
    dep: Deployment,
    owner: str,
    catalog: dict[str, CatalogModel],
    secrets: SecretBox,
    drain_timeout_s: float,
) -> DesiredDeployment:
    return DesiredDeployment(
        deploy_id=dep.id,
        generation=dep.generation,
        desired_replicas=dep.desired_replicas,
        launch=launch_spec(dep, owner, catalog, secrets),
        drain_timeout_s=drain_timeout_s,
    )
