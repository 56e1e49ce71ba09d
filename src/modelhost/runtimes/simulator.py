"""Runtime for the `simulator` engine: an engine process with a timing model and no weights."""

from __future__ import annotations

from collections.abc import Sequence

from modelhost.domain.replicas import Device, LaunchSpec
from modelhost.runtimes.base import base_env, engine_command


class SimulatorRuntime:
    name = "simulator"
    health_path = "/health"
    stats_path: str | None = "/stats"

    def command(self, launch: LaunchSpec, port: int, devices: Sequence[Device]) -> list[str]:
        # Weights flags pass through untouched: the simulator ignores them, but its /info can
        # then show what the deployment names.
        return engine_command(self.name, launch, port, devices)

    def env(self, launch: LaunchSpec, devices: Sequence[Device]) -> dict[str, str]:
        return base_env(launch, devices)
