"""What a replica is, shared by the orchestrator (which places and watches replicas) and the
runtimes (which turn a `LaunchSpec` on some `Device`s into an engine process)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from modelhost.domain.deployments import CPU

# The environment variable that names a replica's virtual devices (virtual GPUs, CPU slots).
VIRTUAL_DEVICES_ENV = "MODELHOST_VIRTUAL_DEVICES"

# The device type every server offers: one slot of the host's CPUs per replica.
CPU_TYPE = CPU


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def live(self) -> bool:
        """Counts towards a deployment's replicas (serving, or about to)."""
        return self in (ReplicaState.STARTING, ReplicaState.READY)

    @property
    def terminal(self) -> bool:
        return self in (ReplicaState.STOPPED, ReplicaState.FAILED)


@dataclass(frozen=True)
class LaunchSpec:
    """What one replica of a deployment runs. A change here is a new generation."""

    engine: str  # a resolved runtime name: "builtin" | "simulator"
    served_model_name: str
    max_batch_size: int
    weights_local: str | None = None
    weights_hf_repo: str | None = None
    weights_hf_revision: str | None = None
    engine_args: tuple[str, ...] = ()
    # E.g. HF_TOKEN. Goes into the child's environment only; repr=False keeps it out of logs
    # and exception messages that format the spec.
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    gpu_type: str = CPU_TYPE
    num_gpus: int = 1

    @property
    def devices_needed(self) -> int:
        """Devices one replica occupies: CPU replicas take one slot whatever num_gpus says."""
        return 1 if self.gpu_type == CPU_TYPE else self.num_gpus


@dataclass(frozen=True)
class Device:
    device_id: str  # "cuda#0" (real), "A100-80GB#3" (virtual), "cpu#1"
    gpu_type: str
    index: int  # the CUDA index for real GPUs; a running number otherwise
    virtual: bool  # True for virtual GPUs and CPU slots: no CUDA device behind it
