"""From a stored deployment to what the planner and the backend need to run it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from modelhost.config import find_vllm_python
from modelhost.config.catalog import CatalogModel
from modelhost.domain.deployment_config import CatalogWeights, HfWeights, LocalWeights
from modelhost.domain.deployments import resolve_engine
from modelhost.domain.replicas import LaunchSpec
from modelhost.orchestrator.types import DesiredDeployment
from modelhost.security.secretbox import SecretBox
from modelhost.store import adapters as adapters_store
from modelhost.store.deployments import config_of
from modelhost.store.tables import Deployment, User


def weights_path(dep: Deployment, catalog: dict[str, CatalogModel]) -> str | None:
    """The local file or folder of a deployment's weights, if they are on this server."""
    weights = config_of(dep).weights
    if isinstance(weights, LocalWeights):
        return weights.path
    if isinstance(weights, CatalogWeights):
        model = catalog.get(weights.name)
        return model.local_path if model is not None else None
    return None


def launch_spec(
    dep: Deployment,
    owner: str,
    catalog: dict[str, CatalogModel],
    secrets: SecretBox,
    adapter_dir: str,
    preload_ids: Sequence[str] = (),
    *,
    real_gpu_types: Collection[str] = (),
    vllm_python: Path | str | None = None,
) -> LaunchSpec:
    """What a replica of `dep` runs. `auto` becomes vLLM on `real_gpu_types` (the server's real
    NVIDIA GPU types) when vLLM is installed: `vllm_python` (the `vllm_python` setting), or else
    what `config.find_vllm_python` finds (MODELHOST_VLLM_PYTHON, .venv-vllm, this interpreter)."""
    config = config_of(dep)
    weights = config.weights
    local = hf_repo = hf_revision = None
    if isinstance(weights, LocalWeights):
        local = weights.path
    elif isinstance(weights, HfWeights):
        hf_repo, hf_revision = weights.repo, weights.revision
    elif isinstance(weights, CatalogWeights):
        model = catalog.get(weights.name)
        if model is not None:
            local, hf_repo, hf_revision = model.local_path, model.hf_repo, model.hf_revision
    secret_env: dict[str, str] = {}
    if dep.hf_token_enc:
        token = secrets.decrypt(dep.hf_token_enc)
        if token:
            secret_env["HF_TOKEN"] = token
    wants_vllm = config.engine in ("auto", "vllm")
    vllm = vllm_python or (find_vllm_python() if wants_vllm else None)
    engine = resolve_engine(
        config.engine,
        weights is not None,
        real_gpu=config.gpu in real_gpu_types,
        vllm_installed=vllm is not None,
    )
    # Flags only the vllm launcher reads (modelhost.engine.vllm_launch).
    vllm_args: tuple[str, ...] = ()
    if engine == "vllm" and vllm is not None:
        vllm_args = ("--vllm-python", str(vllm))
    quantization = ("--quantization", config.quantization) if config.quantization else ()
    return LaunchSpec(
        engine=engine,
        served_model_name=f"{owner}/{dep.model_name}",
        max_batch_size=config.max_batch_size,
        weights_local=local,
        weights_hf_repo=hf_repo,
        weights_hf_revision=hf_revision,
        engine_args=(
            "--adapter-dir",
            adapter_dir,
            "--max-active-adapters",
            str(config.max_active_adapters),
            *(arg for adapter_id in preload_ids for arg in ("--preload-adapter", adapter_id)),
            *vllm_args,
            *quantization,
            *config.engine_args,
        ),
        secret_env=secret_env,
        gpu_type=config.gpu,
        num_gpus=config.num_gpus,
    )


def desired_deployment(
    dep: Deployment,
    owner: str,
    catalog: dict[str, CatalogModel],
    secrets: SecretBox,
    drain_timeout_s: float,
    adapter_dir: str,
    preload_ids: Sequence[str] = (),
    cpu_slot_limit: int | None = None,
) -> DesiredDeployment:
    return DesiredDeployment(
        deploy_id=dep.id,
        generation=dep.generation,
        desired_replicas=dep.desired_replicas,
        launch=launch_spec(dep, owner, catalog, secrets, adapter_dir, preload_ids),
        drain_timeout_s=drain_timeout_s,
        owner=owner,
        cpu_slot_limit=cpu_slot_limit,
    )


def preloaded_adapter_ids(s: Session, dep: Deployment) -> list[str]:
    """The ids of the adapters named in `preloaded_adapters` (`<username>/<name>`, or a bare
    name of the deployment owner's) that are registered on `dep`. Names not registered yet are
    skipped: they load on first use once they are."""
    names = config_of(dep).preloaded_adapters
    if not names:
        return []
    owner = s.get(User, dep.owner_id)
    registered = {}
    for adapter in adapters_store.on_base(s, dep.id):
        user = s.get(User, adapter.owner_id)
        if user is not None:
            registered[f"{user.username}/{adapter.name}"] = adapter.id
    full = [n if "/" in n else f"{owner.username if owner else '?'}/{n}" for n in names]
    return [registered[n] for n in full if n in registered]
