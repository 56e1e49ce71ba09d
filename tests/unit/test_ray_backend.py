"""The Ray backend's bookkeeping over a fake of the few Ray calls it makes (no cluster): actors
Ray cannot place, actors that die with their node, engines that exit, drains, the log mirror,
the inventory following the nodes, orphans killed at adoption, actors Ray refuses. The real
cluster is tests/e2e/test_ray_e2e.py's."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelhost.domain.replicas import LaunchSpec, ReplicaState
from modelhost.orchestrator.backends.base import ReplicaRecord, ReplicaStartSpec
from modelhost.orchestrator.backends.ray_backend import RayBackend
from modelhost.orchestrator.types import ReplicaObservation

A100 = "A100-80GB"
NODE_DIED = RuntimeError("The actor died because its node has died. Node Id: 1234")


class Ref:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error, self.ready = value, error, True


class Method:
    def __init__(self, actor: FakeActor, name: str) -> None:
        self.actor, self.name = actor, name

    def remote(self, *args: Any) -> Ref:
        return self.actor.call(self.name, args)


class FakeActor:
    """An actor whose engine runs at once; tests script its answers."""

    _ports = itertools.count(30000)

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name, self.options = name, options
        self.killed = False
        self.exited = False
        self.placed = True
        self.launch_answer: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": next(self._ports),
            "pid": 4242,
        }
        self.log = b""
        self.poll_error: BaseException | None = None
        self.reason = "replica crashed (exit code 1)"
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Method:
        return Method(self, name)

    def call(self, name: str, args: tuple[Any, ...]) -> Ref:
        self.calls.append((name, args))
        if name == "launch":
            ref = Ref(self.launch_answer)
            ref.ready = self.placed
            return ref
        if name == "poll":
            if self.poll_error is not None:
                return Ref(error=self.poll_error)
            offset = args[0]
            out: dict[str, Any] = {"exited": self.exited, "exit_code": None}
            if self.exited:
                out.update(exit_code=1, reason=self.reason)
            out["log"], out["log_offset"] = self.log[offset:], offset
            return Ref(out)
        if name == "terminate":
            self.exited, self.reason = True, "stopped"
        if name == "launch_info":
            return Ref(self.launch_answer)
        return Ref(None)


class FakeRay:
    def __init__(self) -> None:
        self.nodes_now: list[dict[str, Any]] = [node(1), node(2)]
        self.actors: dict[str, FakeActor] = {}
        self.refuse: Exception | None = None
        # Whether Ray finds a node for new actors at once (False: they wait for room).
        self.room = True
        self.named: list[dict[str, str]] = []
        self.util = SimpleNamespace(list_named_actors=lambda all_namespaces=False: self.named)

    def remote(self, cls: type) -> Any:
        ray = self

        class Options:
            def __init__(self, **options: Any) -> None:
                self.options_ = options

            def remote(self, *args: Any, **kwargs: Any) -> FakeActor:
                if ray.refuse is not None:
                    raise ray.refuse
                actor = FakeActor(self.options_["name"], self.options_)
                actor.placed = ray.room
                ray.actors[self.options_["name"]] = actor
                return actor

        return SimpleNamespace(options=lambda **o: Options(**o))

    def wait(
        self, refs: list[Ref], num_returns: int, timeout: float
    ) -> tuple[list[Ref], list[Ref]]:
        return [r for r in refs if r.ready], [r for r in refs if not r.ready]

    def get(self, ref: Ref, timeout: float | None = None) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value

    def nodes(self) -> list[dict[str, Any]]:
        return self.nodes_now

    def kill(self, actor: FakeActor, no_restart: bool = True) -> None:
        actor.killed = True

    def get_actor(self, name: str, namespace: str) -> FakeActor:
        if name not in self.actors:
            self.actors[name] = FakeActor(name, {})
        return self.actors[name]

    def shutdown(self) -> None:
        pass


def node(gpus: int, gpu_type: str = A100, alive: bool = True) -> dict[str, Any]:
    res = {"CPU": 4.0, "GPU": float(gpus), f"accelerator_type:{gpu_type}": float(gpus)}
    return {"NodeManagerAddress": "127.0.0.1", "Alive": alive, "Resources": res}


@pytest.fixture
def ray() -> FakeRay:
    return FakeRay()


@pytest.fixture
def backend(ray: FakeRay, tmp_path: Path) -> Iterator[RayBackend]:
    b = RayBackend(
        tmp_path,
        address="fake:1",
        namespace="t",
        cpu_slots=1,
        probe_interval_s=0.01,
        placement_timeout_s=0.3,
        stop_grace_s=0.1,
        orphan_grace_s=0.0,
        ray_api=ray,
    )
    yield b
    b.close(timeout_s=1)


def spec(replica_id: str, devices: tuple[str, ...] = (f"{A100}#0",)) -> ReplicaStartSpec:
    launch = LaunchSpec(
        engine="simulator", served_model_name="u/m", max_batch_size=4, gpu_type=A100
    )
    return ReplicaStartSpec(replica_id, "d1", 1, launch, devices)


def observed(b: RayBackend, replica_id: str) -> ReplicaObservation:
    return next(o for o in b.observe() if o.replica_id == replica_id)


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_replica_asks_ray_for_its_gpus_spread_detached_and_named(
    backend: RayBackend, ray: FakeRay
) -> None:
    handle = backend.start(spec("r1", (f"{A100}#0", f"{A100}#1")))
    assert handle.record is not None and handle.record.port == 0  # known once placed
    options = ray.actors["modelhost-replica-r1"].options
    assert options["num_gpus"] == 2 and options["num_cpus"] == 0
    assert options["resources"] == {f"accelerator_type:{A100}": 0.001}
    assert options["lifetime"] == "detached" and options["max_restarts"] == 0
    assert options["scheduling_strategy"] == "SPREAD" and options["namespace"] == "t"
    wait_for(lambda: observed(backend, "r1").port is not None, "the engine's address")
    o = observed(backend, "r1")
    assert o.state == ReplicaState.STARTING and o.base_url == f"http://127.0.0.1:{o.port}"


def test_a_replica_ray_cannot_place_fails_with_the_reason(
    backend: RayBackend, ray: FakeRay
) -> None:
    ray.room = False
    backend.start(spec("r1"))
    time.sleep(0.1)
    assert observed(backend, "r1").state == ReplicaState.STARTING  # waiting for room
    o = wait_for(
        lambda: (x := observed(backend, "r1")).state == ReplicaState.FAILED and x, "failure"
    )
    assert o.fail_reason == (
        "the Ray cluster could not place the replica within 0.3 s: it needs 1 free "
        "A100-80GB GPU(s) on one node"
    )
    assert ray.actors["modelhost-replica-r1"].killed


def test_an_actor_that_dies_with_its_node_fails_the_replica(
    backend: RayBackend, ray: FakeRay
) -> None:
    backend.start(spec("r1"))
    wait_for(lambda: observed(backend, "r1").port is not None, "placement")
    ray.actors["modelhost-replica-r1"].poll_error = NODE_DIED
    o = wait_for(
        lambda: (x := observed(backend, "r1")).state == ReplicaState.FAILED and x, "failure"
    )
    assert o.fail_reason == "its Ray node died (the replica ran there)"
    assert "replica failed: its Ray node died" in Path(o.log_path or "").read_text()


def test_a_drained_replica_whose_actor_goes_is_stopped_not_failed(
    backend: RayBackend, ray: FakeRay
) -> None:
    backend.start(spec("r1"))
    wait_for(lambda: observed(backend, "r1").port is not None, "placement")
    backend.mark_draining("r1")
    assert observed(backend, "r1").state == ReplicaState.DRAINING
    actor = ray.actors["modelhost-replica-r1"]
    actor.poll_error = NODE_DIED
    backend.drain("r1", 5.0)
    assert ("terminate", (5.0,)) in actor.calls
    o = wait_for(lambda: (x := observed(backend, "r1")).state.terminal and x, "the end")
    assert o.state == ReplicaState.STOPPED and o.fail_reason is None


def test_an_engine_that_exits_fails_with_the_nodes_reason_and_its_actor_is_killed(
    backend: RayBackend, ray: FakeRay
) -> None:
    backend.start(spec("r1"))
    wait_for(lambda: observed(backend, "r1").port is not None, "placement")
    actor = ray.actors["modelhost-replica-r1"]
    actor.reason, actor.exited = "out of GPU memory: the model does not fit", True
    o = wait_for(
        lambda: (x := observed(backend, "r1")).state == ReplicaState.FAILED and x, "failure"
    )
    assert o.fail_reason == "out of GPU memory: the model does not fit" and o.exit_code == 1
    assert actor.killed


def test_a_launch_that_fails_on_the_node_fails_the_replica(
    backend: RayBackend, ray: FakeRay
) -> None:
    original = FakeActor.__init__

    def broken(self: FakeActor, name: str, options: dict[str, Any]) -> None:
        original(self, name, options)
        self.launch_answer = {"error": "could not start the engine: no such file", "host": "x"}

    FakeActor.__init__ = broken  # type: ignore[method-assign]
    try:
        backend.start(spec("r1"))
    finally:
        FakeActor.__init__ = original  # type: ignore[method-assign]
    o = wait_for(lambda: (x := observed(backend, "r1")).state.terminal and x, "failure")
    assert o.state == ReplicaState.FAILED
    assert o.fail_reason == "could not start the engine: no such file"


def test_the_engines_log_is_mirrored_into_the_data_dir_with_time_stamps(
    backend: RayBackend, ray: FakeRay, tmp_path: Path
) -> None:
    backend.start(spec("r1"))
    actor = ray.actors["modelhost-replica-r1"]
    actor.log = b"engine line 1\n"
    mirror = tmp_path / "logs" / "d1" / "r1.log"
    wait_for(lambda: b"engine line 1\n" in mirror.read_bytes(), "the first chunk")
    actor.log += b"engine line 2\n"
    wait_for(lambda: mirror.read_bytes().endswith(b"engine line 2\n"), "the second chunk")
    text = mirror.read_text()
    assert text.startswith("[modelhost] placing replica r1 on the Ray cluster")
    assert text.count("engine line 1") == 1  # each chunk once
    assert (tmp_path / "logs" / "d1" / "r1.log.stamps").exists()


def test_the_inventory_follows_the_clusters_nodes(backend: RayBackend, ray: FakeRay) -> None:
    inventory = backend.live_inventory()
    assert inventory.total(A100) == 3 and inventory.is_virtual(A100)
    backend.start(spec("r1", (f"{A100}#2",)))
    ray.nodes_now = [node(2), node(1, alive=False)]
    wait_for(lambda: inventory.total(A100) == 2, "the lost node's GPU to go")
    # The running replica's id stays; one fresh id makes up the count.
    assert sorted(inventory.free([])[A100]) == [f"{A100}#0", f"{A100}#2"]
    assert inventory.available(backend.observe())[A100] == 1
    ray.nodes_now = [node(2), node(1), node(4, "H100-80GB")]
    wait_for(lambda: inventory.total("H100-80GB") == 4, "a new node's GPUs")


def test_adoption_kills_the_orphans_of_its_namespace_only(
    backend: RayBackend, ray: FakeRay
) -> None:
    ray.named = [
        {"name": "modelhost-replica-orphan", "namespace": "t"},
        {"name": "modelhost-replica-theirs", "namespace": "other"},
        {"name": "something-else", "namespace": "t"},
    ]
    result = backend.adopt([])
    assert result.adopted == () and result.cleaned == ()
    assert ray.actors["modelhost-replica-orphan"].killed
    assert "modelhost-replica-theirs" not in ray.actors
    assert "something-else" not in ray.actors


def test_an_actor_ray_refuses_is_a_failed_start(backend: RayBackend, ray: FakeRay) -> None:
    ray.refuse = ValueError("Actor name modelhost-replica-r1 is already taken")
    handle = backend.start(spec("r1"))
    assert handle.record is None
    o = observed(backend, "r1")
    assert o.state == ReplicaState.FAILED
    assert o.fail_reason == (
        "could not start the engine: Actor name modelhost-replica-r1 is already taken"
    )


def test_close_stops_every_replica_and_kills_every_actor(backend: RayBackend, ray: FakeRay) -> None:
    backend.start(spec("r1"))
    backend.start(spec("r2", (f"{A100}#1",)))
    wait_for(lambda: all(o.port is not None for o in backend.observe()), "placement")
    backend.close(timeout_s=2)
    assert all(o.state == ReplicaState.STOPPED for o in backend.observe())
    assert all(a.killed for a in ray.actors.values())
    assert all(("terminate", (0.1,)) in a.calls for a in ray.actors.values())


def rec(replica_id: str, actor: FakeActor) -> ReplicaRecord:
    return ReplicaRecord(
        replica_id=replica_id,
        deploy_id="d1",
        generation=1,
        pid=0,
        port=0,
        log_path="",
        devices=(f"{A100}#0",),
        proc_start_ticks=0,
        started_at=time.time(),
    )


def test_an_unnamed_actor_is_killed_only_after_the_grace_and_a_late_row_saves_it(
    ray: FakeRay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one database: a just-deposed leader creates an actor and writes its row a
    moment after the new leader adopted. The new leader must not kill it at first sight; the
    next sweep with the row adopts it; an actor no row ever names is killed after the grace."""
    b = RayBackend(
        tmp_path,
        address="fake:1",
        namespace="t",
        probe_interval_s=3600,
        ray_api=ray,
        orphan_grace_s=20.0,
    )
    monkeypatch.setattr(b, "_health_status", _healthy)
    try:
        late = ray.get_actor("modelhost-replica-late", "t")
        stray = ray.get_actor("modelhost-replica-stray", "t")
        ray.named = [
            {"name": "modelhost-replica-late", "namespace": "t"},
            {"name": "modelhost-replica-stray", "namespace": "t"},
        ]
        assert b.adopt([]).adopted == ()
        assert not late.killed and not stray.killed  # first sight: not yet
        # The deposed leader's row for "late" lands; the next sweep hands it over.
        assert b.adopt([rec("late", late)]).adopted == ("late",)
        assert not late.killed and not stray.killed
        # 21 s after "stray" was first seen, still no row names it (clock moved by hand).
        b._unrecorded = {k: v - 21.0 for k, v in b._unrecorded.items()}
        assert set(b._unrecorded) == {"modelhost-replica-stray"}
        b.adopt([])
        assert stray.killed and not late.killed
        assert {o.replica_id for o in b.observe()} == {"late"}
    finally:
        b.close(stop_replicas=False, timeout_s=1)


async def _healthy(host: str, port: int) -> int:
    return 200


def test_a_disowned_replica_is_neither_watched_nor_killed_and_is_adopted_again(
    backend: RayBackend, ray: FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deposed leader lets its replicas go: no placement timer or poll of its may kill an
    actor the new leader watches; a later term adopts them again by name."""
    ray.room = False  # r1 waits for room: its placement deadline (0.3 s) would kill it
    backend.start(spec("r1"))
    actor = ray.actors["modelhost-replica-r1"]
    backend.disown()
    assert backend.observe() == []
    time.sleep(0.6)  # past the placement deadline, many ticks
    assert not actor.killed
    assert backend.inventory().available([])[A100] == 3
    monkeypatch.setattr(backend, "_health_status", _healthy)
    assert backend.adopt([rec("r1", actor)]).adopted == ("r1",)
    assert observed(backend, "r1").state == ReplicaState.READY
