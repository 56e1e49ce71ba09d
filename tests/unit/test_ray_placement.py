"""Placement on a Ray cluster, with fakes (no Ray): what a replica asks Ray for, the inventory
built from `ray.nodes()`, and what the planner makes of it as nodes join and leave
(modelhost.orchestrator.backends.ray_placement, ray_backend.ClusterInventory)."""

from __future__ import annotations

from typing import Any

import pytest

from modelhost.domain.replicas import LaunchSpec, ReplicaState
from modelhost.orchestrator.backends.ray_actor import bind_host, node_devices
from modelhost.orchestrator.backends.ray_backend import ClusterInventory, actor_death_reason
from modelhost.orchestrator.backends.ray_placement import (
    cluster_devices,
    gpu_type_of,
    gpus_by_type,
    is_loopback,
    replica_resources,
    split_address,
)
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.planner import plan
from modelhost.orchestrator.types import (
    DesiredDeployment,
    ReplicaObservation,
    ReportPending,
    RestartPolicy,
    StartReplica,
)

A100 = "A100-80GB"


def node(gpus: float, *types: str, alive: bool = True, cpus: float = 8) -> dict[str, Any]:
    res: dict[str, float] = {"CPU": cpus, "memory": 1e9, "node:127.0.0.1": 1.0}
    if gpus:
        res["GPU"] = gpus
    for t in types:
        res[f"accelerator_type:{t}"] = gpus or 1.0
    return {"NodeManagerAddress": "127.0.0.1", "Alive": alive, "Resources": res}


def observed(rid: str, devices: tuple[str, ...], state: ReplicaState) -> ReplicaObservation:
    return ReplicaObservation(rid, "d1", 1, state, 1, 1, devices, 0.0)


def desired(n: int, gpus: int = 1) -> DesiredDeployment:
    launch = LaunchSpec(
        engine="simulator", served_model_name="u/m", max_batch_size=4, gpu_type=A100, num_gpus=gpus
    )
    return DesiredDeployment("d1", 1, n, launch)


# ---- what a replica asks Ray for -----------------------------------------------------------


def test_a_gpu_replica_asks_for_its_gpus_and_a_sliver_of_its_type() -> None:
    need = replica_resources((f"{A100}#0", f"{A100}#3"))
    assert need.as_options() == {
        "num_cpus": 0,
        "num_gpus": 2,
        "resources": {"accelerator_type:A100-80GB": 0.001},
    }


def test_a_cpu_replica_asks_for_one_cpu() -> None:
    assert replica_resources(("cpu#2",)).as_options() == {
        "num_cpus": 1,
        "num_gpus": 0,
        "resources": {},
    }
    assert gpu_type_of(("cpu#0",)) == "CPU" and gpu_type_of(()) == "CPU"


# ---- the cluster's GPUs --------------------------------------------------------------------


def test_gpus_are_counted_per_type_over_live_nodes() -> None:
    nodes = [
        node(0),  # the head: no GPU
        node(1, A100),
        node(2, A100),
        node(4, "H100-80GB"),
        node(8, A100, alive=False),  # a dead node offers nothing
        node(2),  # GPUs without a type: no replica could ask for them
        node(0, "L4-24GB"),  # a type without GPUs
    ]
    assert gpus_by_type(nodes) == {A100: 3, "H100-80GB": 4}


def test_a_node_naming_two_types_counts_its_gpus_once() -> None:
    assert gpus_by_type([node(2, "B", "A")]) == {"A": 2}


def test_device_tokens_keep_the_held_ids_and_fill_up_to_the_count() -> None:
    devices = cluster_devices({A100: 3}, [f"{A100}#1"], cpu_slots=2, virtual=True)
    ids = [d.device_id for d in devices]
    assert ids == [f"{A100}#0", f"{A100}#1", f"{A100}#2", "cpu#0", "cpu#1"]
    assert all(d.virtual for d in devices)


def test_when_the_cluster_shrinks_below_what_is_held_nothing_is_free() -> None:
    # 3 GPUs, replicas hold #0 and #2; then the 1-GPU node dies: 2 GPUs, both held.
    held = [f"{A100}#0", f"{A100}#2"]
    inv = Inventory(cluster_devices({A100: 2}, held, cpu_slots=0, virtual=True))
    live = [observed("r1", (f"{A100}#0",), ReplicaState.READY)]
    live.append(observed("r2", (f"{A100}#2",), ReplicaState.READY))
    assert inv.available(live)[A100] == 0
    # The replica of the lost node is observed failed: its id is free again, as is one GPU.
    after = Inventory(cluster_devices({A100: 2}, [f"{A100}#2"], cpu_slots=0, virtual=True))
    failed = [live[1], observed("r1", (f"{A100}#0",), ReplicaState.FAILED)]
    assert after.free(failed)[A100] == [f"{A100}#0"]


def test_a_type_that_left_the_cluster_keeps_only_its_held_ids() -> None:
    inv = Inventory(cluster_devices({}, ["H100-80GB#5"], cpu_slots=1, virtual=True))
    assert inv.total("H100-80GB") == 1
    assert inv.available([observed("r", ("H100-80GB#5",), ReplicaState.READY)])["H100-80GB"] == 0


# ---- the planner on a cluster inventory ----------------------------------------------------


def test_the_planner_places_what_the_cluster_holds_and_reports_the_rest_pending() -> None:
    inv = Inventory(cluster_devices(gpus_by_type([node(1, A100)]), [], 0, virtual=True))
    actions = plan([desired(2)], [], inv, {}, 0.0, RestartPolicy())
    starts = [a for a in actions if isinstance(a, StartReplica)]
    pending = [a for a in actions if isinstance(a, ReportPending)]
    assert [a.devices for a in starts] == [(f"{A100}#0",)]
    assert pending and pending[0].pending == 1
    assert "1 of 2 replicas pending" in pending[0].reason


def test_a_node_that_joins_makes_room_for_the_pending_replica() -> None:
    running = [observed("r1", (f"{A100}#0",), ReplicaState.READY)]
    nodes = [node(1, A100), node(1, A100)]
    inv = Inventory(cluster_devices(gpus_by_type(nodes), [f"{A100}#0"], 0, virtual=True))
    actions = plan([desired(2)], running, inv, {}, 0.0, RestartPolicy())
    assert [a.devices for a in actions if isinstance(a, StartReplica)] == [(f"{A100}#1",)]


def test_a_cluster_inventory_view_follows_its_source() -> None:
    current = [Inventory(cluster_devices({A100: 1}, [], 1, virtual=True))]
    view = ClusterInventory(lambda: current[0])
    assert view.types() == [(A100, 1), ("CPU", 1)]
    current[0] = Inventory(cluster_devices({A100: 4}, [], 1, virtual=True))
    assert view.total(A100) == 4 and view.has_type(A100) and view.is_virtual(A100)
    assert view.type_of(f"{A100}#3") == A100 and view.summary()[A100] == 4
    assert view.device(f"{A100}#2").index == 2
    assert view.available([])[A100] == 4 and len(view.free([])[A100]) == 4


# ---- on the node ---------------------------------------------------------------------------


def test_the_engine_binds_the_nodes_address() -> None:
    cmd = ["python", "-m", "modelhost.engine", "--host", "127.0.0.1", "--port", "5"]
    assert bind_host(cmd, "10.0.0.7")[4] == "10.0.0.7"


def test_node_devices_are_the_cuda_indexes_ray_gave_or_virtual_ones() -> None:
    real = node_devices(A100, [2, 3], 2, real=True)
    assert [(d.device_id, d.index, d.virtual) for d in real] == [
        ("cuda#2", 2, False),
        ("cuda#3", 3, False),
    ]
    virtual = node_devices(A100, [0], 1, real=False)
    assert [(d.device_id, d.virtual) for d in virtual] == [(f"{A100}#0", True)]
    assert node_devices("CPU", [], 1, real=True)[0].virtual


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "The actor died because its node has died. Node Id: abc",
            "its Ray node died (the replica ran there)",
        ),
        ("The actor is dead because it was killed by `ray.kill`.", "its Ray actor died: The"),
    ],
)
def test_an_actor_death_is_told_in_words(message: str, reason: str) -> None:
    assert actor_death_reason(RuntimeError(message)).startswith(reason)


def test_addresses() -> None:
    assert split_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert split_address("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert split_address("[::1]:6379") == ("::1", 6379)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("10.0.0.5")
