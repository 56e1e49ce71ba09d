"""Runtime for the `builtin` PyTorch engine (modelhost.engine.builtin)."""

from __future__ import annotations

from collections.abc import Sequence

from modelhost.domain.replicas import Device, LaunchSpec
from modelhost.runtimes.base import RuntimeConfigError, base_env, engine_command


class BuiltinRuntime:
    name = "builtin"
    health_path = "/health"
    stats_path: str | None = "/stats"

    def command(self, launch: LaunchSpec, port: int, devices: Sequence[Device]) -> list[str]:
        if not launch.weights_local and not launch.weights_hf_repo:
            raise RuntimeConfigError(
                "the builtin engine needs weights: a local path, a Hugging Face repo or a "
                "catalog model"
            )
        return engine_command(self.name, launch, port, devices)

    def env(self, launch: LaunchSpec, devices: Sequence[Device]) -> dict[str, str]:
        env = base_env(launch, devices)
        # Without an explicit token the hub client must not pick up one from a config file in
        # the server's home directory: a user's replica gets only the user's own token.
        env.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        return env
