"""Placement on a Ray cluster, as pure functions (no Ray import): what a replica asks Ray for,
and the inventory the planner sees, built from the cluster's nodes.

A node offers a GPU type through Ray's `accelerator_type:<type>` resource (what Ray detects on
real GPUs, or what `ray start --resources '{"accelerator_type:A100-80GB": N}'` declares for
virtual ones) and its GPUs through `GPU`. A replica asks for `num_gpus` GPUs plus a sliver of
its type's resource, so Ray places it only on a node of that type with enough free GPUs.

The planner works on device ids (`A100-80GB#3`); on Ray they are tokens that count the
cluster's GPUs of a type, not physical devices: Ray picks the node and the GPUs, and the replica
learns its CUDA indexes there. The ids the running replicas hold are kept in every rebuilt
inventory, so a node that joins or leaves changes only how many ids are free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelhost.domain.replicas import CPU_TYPE, Device

ACCELERATOR_PREFIX = "accelerator_type:"
# How much of the type's resource one replica asks for: any amount > 0 pins the type (Ray's
# own convention); small enough that a node declaring `accelerator_type:X: 1` takes many.
ACCELERATOR_SLIVER = 0.001
# Ray's named actors of this package start with this, one per replica.
ACTOR_PREFIX = "modelhost-replica-"

_DEVICE_ID = re.compile(r"^(?P<type>.+)#(?P<index>\d+)$")


@dataclass(frozen=True)
class ReplicaResources:
    """What the actor of one replica asks Ray for (`ray.remote(...).options(**as_options())`)."""

    num_cpus: float
    num_gpus: float
    resources: Mapping[str, float]

    def as_options(self) -> dict[str, Any]:
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": dict(self.resources),
        }


def gpu_type_of(devices: Sequence[str]) -> str:
    """The type of a replica's devices (`A100-80GB#0` -> `A100-80GB`, `cpu#1` -> `CPU`)."""
    if not devices:
        return CPU_TYPE
    m = _DEVICE_ID.match(devices[0])
    name = m.group("type") if m else devices[0]
    return CPU_TYPE if name.lower() == "cpu" else name


def replica_resources(devices: Sequence[str]) -> ReplicaResources:
    """A GPU replica: its GPU count and a sliver of its type, no CPU reserved (the engine's CPU
    time is not what limits GPU replicas). A CPU replica: one CPU, like one local CPU slot."""
    gpu_type = gpu_type_of(devices)
    if gpu_type == CPU_TYPE:
        return ReplicaResources(num_cpus=1, num_gpus=0, resources={})
    return ReplicaResources(
        num_cpus=0,
        num_gpus=len(devices),
        resources={ACCELERATOR_PREFIX + gpu_type: ACCELERATOR_SLIVER},
    )


def gpus_by_type(nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GPUs per type over the live nodes of `ray.nodes()`. A node's GPUs count for the type its
    `accelerator_type:` resource names; GPUs without a type (nor a type without GPUs) are not
    offered, since no replica could ask for them."""
    totals: dict[str, int] = {}
    for node in nodes:
        if not node.get("Alive", False):
            continue
        res: Mapping[str, float] = node.get("Resources") or {}
        types = sorted(
            k[len(ACCELERATOR_PREFIX) :] for k in res if k.startswith(ACCELERATOR_PREFIX)
        )
        gpus = int(res.get("GPU", 0))
        if not types or gpus <= 0:
            continue
        # One type per node is how Ray (and the docs) describe nodes; a node naming several
        # counts for the first, so no GPU is offered twice.
        totals[types[0]] = totals.get(types[0], 0) + gpus
    return totals


def cluster_devices(
    totals: Mapping[str, int],
    held: Iterable[str],
    cpu_slots: int,
    *,
    virtual: bool,
) -> list[Device]:
    """Device tokens for the planner: per GPU type, the ids running replicas hold (kept even
    when the cluster shrank below them, so they never look free twice) plus fresh ids up to the
    cluster's count; `cpu_slots` CPU slots. When the cluster has fewer GPUs of a type than its
    replicas hold, none is free."""
    held_by_type: dict[str, set[int]] = {}
    for device_id in held:
        m = _DEVICE_ID.match(device_id)
        if m:
            held_by_type.setdefault(m.group("type"), set()).add(int(m.group("index")))
    devices: list[Device] = []
    for gpu_type in sorted(set(totals) | set(held_by_type)):
        if gpu_type.lower() == "cpu":
            continue
        taken = held_by_type.get(gpu_type, set())
        indexes = set(taken)
        fresh = max(0, totals.get(gpu_type, 0) - len(taken))
        i = 0
        while fresh > 0:
            if i not in indexes:
                indexes.add(i)
                fresh -= 1
            i += 1
        devices += [Device(f"{gpu_type}#{i}", gpu_type, i, virtual) for i in sorted(indexes)]
    cpu_held = held_by_type.get("cpu", set())
    cpu_indexes = set(range(max(cpu_slots, 0))) | cpu_held
    devices += [Device(f"cpu#{i}", CPU_TYPE, i, True) for i in sorted(cpu_indexes)]
    return devices


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def split_address(address: str) -> tuple[str, int | None]:
    """`host:port` (or `ray://host:port`, or `[::1]:port`) -> (host, port)."""
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail.lstrip(":")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return host, int(port) if port.isdigit() else None
