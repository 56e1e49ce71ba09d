"""GPU inventory: nvidia-smi parsing, type names, virtual devices, free devices, env."""

from __future__ import annotations

import subprocess

import pytest

from modelhost.domain.replicas import VIRTUAL_DEVICES_ENV, ReplicaState
from modelhost.orchestrator.inventory import (
    GpuInfo,
    Inventory,
    InventoryError,
    discover_nvidia,
    gpu_type_for,
    parse_nvidia_smi,
    parse_virtual_spec,
)
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.runtimes.base import device_env, torch_device

SMI_OUTPUT = """\
0, NVIDIA H100 80GB HBM3, 81559 MiB
1, NVIDIA H100 80GB HBM3, 81559 MiB

2, NVIDIA A100-SXM4-40GB, 40960 MiB
garbage line
x, NVIDIA L4, 23034 MiB
3, NVIDIA L4, [N/A]
"""


def test_parse_nvidia_smi() -> None:
    assert parse_nvidia_smi(SMI_OUTPUT) == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", 81559),
        GpuInfo(2, "NVIDIA A100-SXM4-40GB", 40960),
        GpuInfo(3, "NVIDIA L4", 0),
    ]


@pytest.mark.parametrize(
    ("name", "mib", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("NVIDIA H100 PCIe", 81559, "H100-80GB"),
        ("NVIDIA H100 NVL", 95830, "H100-94GB"),
        ("NVIDIA H200", 143771, "H200-141GB"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 40536, "A100-40GB"),
        ("NVIDIA L4", 23034, "L4-24GB"),
        ("NVIDIA L40S", 46068, "L40S-48GB"),
        ("NVIDIA L40", 46068, "L40-48GB"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX4090-24GB"),
        ("NVIDIA A10G", 23028, "A10G-24GB"),
        ("Tesla T4", 15360, "T4-16GB"),
        ("NVIDIA RTX A6000", 49140, "RTXA6000-48GB"),
        ("NVIDIA Mystery 12GB", 12288, "MYSTERY-12GB"),
    ],
)
def test_gpu_type_names(name: str, mib: int, expected: str) -> None:
    assert gpu_type_for(name, mib) == expected


def test_parse_virtual_spec() -> None:
    assert parse_virtual_spec("A100-80GB:8, H100-80GB:4,L4-24GB") == [
        ("A100-80GB", 8),
        ("H100-80GB", 4),
        ("L4-24GB", 1),
    ]
    assert parse_virtual_spec("") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("A100-80GB:x", "invalid count"),
        ("A100-80GB:0", "at least 1"),
        ("A100-80GB:1,A100-80GB:2", "listed twice"),
        ("CPU:4", "--cpu-slots"),
        ("bad name:2", "invalid GPU type"),
    ],
)
def test_parse_virtual_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        parse_virtual_spec(spec)


def test_inventory_types_free_and_env() -> None:
    real = [GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559), GpuInfo(1, "NVIDIA H100 80GB HBM3", 81559)]
    inv = Inventory.build(real, "A100-80GB:3", cpu_slots=2)
    assert inv.types() == [("A100-80GB", 3), ("H100-80GB", 2), ("CPU", 2)]
    assert not inv.is_virtual("H100-80GB")
    assert inv.is_virtual("A100-80GB") and inv.is_virtual("CPU")

    def o(state: ReplicaState, devices: tuple[str, ...]) -> ReplicaObservation:
        return ReplicaObservation("r", "d", 1, state, 1, 1, devices, 0.0)

    free = inv.free(
        [
            o(ReplicaState.READY, ("cuda#1",)),
            o(ReplicaState.DRAINING, ("A100-80GB#0",)),
            o(ReplicaState.STARTING, ("cpu#1",)),
            o(ReplicaState.FAILED, ("A100-80GB#2",)),
            o(ReplicaState.STOPPED, ("cpu#0",)),
        ]
    )
    assert free == {
        "H100-80GB": ["cuda#0"],
        "A100-80GB": ["A100-80GB#1", "A100-80GB#2"],
        "CPU": ["cpu#0"],
    }

    def env_for(ids: list[str]) -> dict[str, str]:
        return device_env([inv.device(d) for d in ids])

    assert env_for(["cuda#0", "cuda#1"]) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert torch_device([inv.device("cuda#1")]) == "cuda"
    assert env_for(["A100-80GB#1", "A100-80GB#2"]) == {
        "CUDA_VISIBLE_DEVICES": "",
        VIRTUAL_DEVICES_ENV: "A100-80GB#1,A100-80GB#2",
    }
    assert torch_device([inv.device("A100-80GB#1")]) == "cpu"
    assert env_for(["cpu#0"])["CUDA_VISIBLE_DEVICES"] == ""


def test_virtual_type_clashing_with_a_real_one_is_refused() -> None:
    with pytest.raises(InventoryError, match="real GPU"):
        Inventory.build([GpuInfo(0, "NVIDIA L4", 23034)], "L4-24GB:2", cpu_slots=1)


def test_discovery_without_or_with_broken_nvidia_smi() -> None:
    assert discover_nvidia(lambda args: "0, NVIDIA L4, 23034 MiB\n") == [
        GpuInfo(0, "NVIDIA L4", 23034)
    ]

    def broken(args: list[str]) -> str:
        raise subprocess.CalledProcessError(9, ["nvidia-smi", *args])

    assert discover_nvidia(broken) == []
    # This machine has no GPU driver: discovery offers the CPU type only.
    inv = Inventory.discover("", cpu_slots=3, nvidia=False)
    assert inv.types() == [("CPU", 3)]
