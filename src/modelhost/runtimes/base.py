"""How a deployment's replica is launched: the `Runtime` contract and the shared engine command.

A runtime turns a `LaunchSpec` plus a port and the replica's devices into the command line and
environment of one engine process, and names the path that answers 200 once it is ready. Secrets
(`LaunchSpec.secret_env`) only ever go into the environment, never onto the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Protocol

from modelhost.domain.replicas import VIRTUAL_DEVICES_ENV, Device, LaunchSpec


class RuntimeConfigError(ValueError):
    """The launch spec cannot run on this runtime (e.g. the builtin engine without weights)."""


class Runtime(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def health_path(self) -> str: ...

    @property
    def stats_path(self) -> str | None: ...

    def command(self, launch: LaunchSpec, port: int, devices: Sequence[Device]) -> list[str]: ...

    def env(self, launch: LaunchSpec, devices: Sequence[Device]) -> dict[str, str]: ...


def engine_command(
    engine: str, launch: LaunchSpec, port: int, devices: Sequence[Device]
) -> list[str]:
    """`python -m modelhost.engine ...` with the common flags, then the deployment's own."""
    return module_command("modelhost.engine", launch, port, devices, lead=["--engine", engine])


def module_command(
    module: str,
    launch: LaunchSpec,
    port: int,
    devices: Sequence[Device],
    *,
    lead: Sequence[str] = (),
    one_weights_source: bool = False,
    device_flags: Sequence[str] = (),
) -> list[str]:
    """`python -m <module> <lead> ...` with modelhost's common engine flags (address, served
    name, batch size, weights, device), then `device_flags`, then the deployment's own args.

    `one_weights_source` passes only one of the weights (the local path, preferred over the
    Hugging Face repo) for engines that take a single source.
    """
    cmd = [
        sys.executable,
        "-m",
        module,
        *lead,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        launch.served_model_name,
        "--max-batch-size",
        str(launch.max_batch_size),
    ]
    if launch.weights_local:
        cmd += ["--weights-local", launch.weights_local]
    if launch.weights_hf_repo and not (one_weights_source and launch.weights_local):
        cmd += ["--weights-hf-repo", launch.weights_hf_repo]
        if launch.weights_hf_revision:
            cmd += ["--weights-hf-revision", launch.weights_hf_revision]
    cmd += ["--device", torch_device(devices)]
    cmd += device_flags
    cmd += list(launch.engine_args)
    return cmd


def base_env(launch: LaunchSpec, devices: Sequence[Device]) -> dict[str, str]:
    env = device_env(devices)
    # Output goes to a log file; unbuffered so the logs API and the fatal-line parser see lines
    # as they are written.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(launch.secret_env)
    return env


def device_env(devices: Sequence[Device]) -> dict[str, str]:
    """Narrow a process to its devices: real GPUs by CUDA index. Virtual GPUs and CPU slots
    hide every CUDA device, so the engine runs on the CPU, and name the devices they stand for."""
    real = [d for d in devices if not d.virtual]
    if real:
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(d.index) for d in real)}
    return {
        "CUDA_VISIBLE_DEVICES": "",
        VIRTUAL_DEVICES_ENV: ",".join(d.device_id for d in devices),
    }


def torch_device(devices: Sequence[Device]) -> str:
    """`cuda` when the replica has a real GPU, else `cpu`."""
    return "cuda" if any(not d.virtual for d in devices) else "cpu"
