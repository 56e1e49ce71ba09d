"""The local backend with real processes on 127.0.0.1: start, probe, crash, drain, adopt.

Most tests run `fake_engine.py` (a tiny stdlib HTTP server) so they exercise process handling
alone; `test_simulator_*` run the real simulator engine through the real runtime. The last tests
drive the real reconciler over this backend (its other seams faked in memory); the reconciler's
rules themselves are unit-tested in tests/unit/test_reconciler.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from modelhost.domain.replicas import Device, LaunchSpec, ReplicaState
from modelhost.orchestrator.backends.base import ReplicaRecord, ReplicaStartSpec
from modelhost.orchestrator.backends.local import LocalBackend
from modelhost.orchestrator.backends.local_process import proc_start_ticks, proc_stat
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.reconciler import Reconciler
from modelhost.orchestrator.types import ReplicaObservation, RestartPolicy
from modelhost.runtimes import Runtime, RuntimeConfigError, resolve
from modelhost.runtimes.base import base_env
from tests.orchestrator_fakes import FakeRouting, MemoryStore, Row

pytestmark = pytest.mark.e2e

FAKE = str(Path(__file__).with_name("fake_engine.py"))
INV = Inventory.build([], "A100-80GB:4", cpu_slots=4)
WAIT_S = 60.0  # a guard against hanging, not a performance expectation


class FakeRuntime:
    name = "fake"
    health_path = "/health"
    stats_path: str | None = "/stats"

    def command(self, launch: LaunchSpec, port: int, devices: Sequence[Device]) -> list[str]:
        return [sys.executable, FAKE, str(port), *launch.engine_args]

    def env(self, launch: LaunchSpec, devices: Sequence[Device]) -> dict[str, str]:
        return base_env(launch, devices)


class BrokenRuntime(FakeRuntime):
    def command(self, launch: LaunchSpec, port: int, devices: Sequence[Device]) -> list[str]:
        raise RuntimeConfigError("the builtin engine needs weights")


def runtime_for(engine: str) -> Runtime:
    if engine == "fake":
        return FakeRuntime()
    if engine == "broken":
        return BrokenRuntime()
    return resolve(engine)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent that is not us."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Every process a test started: none may outlive it."""
    started: list[int] = []
    yield started
    leaked = [p for p in started if alive(p)]
    for p in leaked:
        os.kill(p, signal.SIGKILL)
    assert leaked == []


def make_backend(tmp_path: Path, **kw: float) -> LocalBackend:
    opts: dict[str, float] = {"probe_interval_s": 0.05, "stop_grace_s": 2.0}
    opts.update(kw)
    return LocalBackend(tmp_path, INV, runtime_for=runtime_for, **opts)  # type: ignore[arg-type]


def spec(
    replica_id: str,
    *args: str,
    engine: str = "fake",
    devices: tuple[str, ...] = ("A100-80GB#0",),
    secret: str | None = None,
) -> ReplicaStartSpec:
    launch = LaunchSpec(
        engine=engine,
        served_model_name="alice/m",
        max_batch_size=8,
        engine_args=tuple(args),
        secret_env={"HF_TOKEN": secret} if secret else {},
        gpu_type="A100-80GB",
        num_gpus=len(devices),
    )
    return ReplicaStartSpec(replica_id, "dep1", 1, launch, devices)


def wait_for(
    backend: LocalBackend, replica_id: str, pred: Callable[[ReplicaObservation], bool]
) -> ReplicaObservation:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for o in backend.observe():
            if o.replica_id == replica_id and pred(o):
                return o
        time.sleep(0.02)
    raise AssertionError(f"{replica_id} never matched; last: {backend.observe()}")


def in_state(*states: ReplicaState) -> Callable[[ReplicaObservation], bool]:
    return lambda o: o.state in states


def test_start_probe_stats_logs_and_secrets(
    tmp_path: Path, pids: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELHOST_ADMIN_TOKEN", "mh_admin_secret")
    monkeypatch.setenv("MODELHOST_CACHE_DIR", str(tmp_path / "cache"))
    backend = make_backend(tmp_path)
    try:
        handle = backend.start(spec("r1", "--startup-s", "0.3", secret="hf_topsecret"))
        assert handle.record is not None
        pids.append(handle.record.pid)
        first = backend.observe()[0]
        assert first.state == ReplicaState.STARTING and first.devices == ("A100-80GB#0",)
        o = wait_for(backend, "r1", lambda o: o.state == ReplicaState.READY and o.running == 2)
        assert (o.running, o.waiting, o.port) == (2, 1, handle.record.port)
        assert o.ready_at is not None and o.ready_at >= o.started_at
        assert httpx.get(f"{o.base_url}/health").status_code == 200
        # Secrets travel in the environment, never on the command line.
        cmdline = Path(f"/proc/{o.pid}/cmdline").read_bytes()
        assert b"hf_topsecret" not in cmdline
        # Own process group, so a stop reaches everything the engine spawned.
        assert os.getpgid(handle.record.pid) == handle.record.pid
        log_path = tmp_path / "logs" / "dep1" / "r1.log"
        assert o.log_path == str(log_path)
        text = log_path.read_text()
        assert "fake engine starting" in text
        assert "HF_TOKEN_PRESENT=True" in text
        # Control-plane credentials stay with the server; engine settings pass.
        assert "MODELHOST_ENV=MODELHOST_CACHE_DIR,MODELHOST_VIRTUAL_DEVICES\n" in text
        assert "hf_topsecret" not in text
    finally:
        backend.close()
    assert backend.observe()[0].state == ReplicaState.STOPPED


def test_sigkill_is_observed_failed_with_a_reason(tmp_path: Path, pids: list[int]) -> None:
    backend = make_backend(tmp_path)
    try:
        handle = backend.start(spec("r1"))
        assert handle.record is not None
        pids.append(handle.record.pid)
        wait_for(backend, "r1", in_state(ReplicaState.READY))
        os.kill(handle.record.pid, signal.SIGKILL)
        o = wait_for(backend, "r1", in_state(ReplicaState.FAILED))
        assert o.exit_code == -signal.SIGKILL
        assert o.fail_reason is not None
        assert o.fail_reason.startswith("replica crashed (killed by SIGKILL)")
        assert o.exited_at is not None and o.running is None
        # Kept for the reconciler until it forgets it.
        backend.forget("r1")
        assert backend.observe() == []
    finally:
        backend.close()


def test_fatal_line_becomes_the_fail_reason(tmp_path: Path, pids: list[int]) -> None:
    msg = "could not download meta-llama/Llama-2-7b-chat-hf: no network access to the Hub"
    backend = make_backend(tmp_path)
    try:
        handle = backend.start(spec("r1", "--fail-start", msg))
        assert handle.record is not None
        pids.append(handle.record.pid)
        o = wait_for(backend, "r1", in_state(ReplicaState.FAILED))
        assert (o.fail_reason, o.exit_code, o.ready_at) == (msg, 3, None)
        assert "replica failed: " + msg in Path(o.log_path or "").read_text()
    finally:
        backend.close()


def test_never_healthy_is_killed_at_the_startup_timeout(tmp_path: Path, pids: list[int]) -> None:
    # Long enough for the stand-in engine to print its first line even on a loaded machine.
    backend = make_backend(tmp_path, startup_timeout_s=3.0)
    try:
        handle = backend.start(spec("r1", "--startup-s", "1000"))
        assert handle.record is not None
        pids.append(handle.record.pid)
        o = wait_for(backend, "r1", in_state(ReplicaState.FAILED))
        assert o.fail_reason is not None
        assert o.fail_reason.startswith("did not become ready within 3 s")
        assert "last output: HF_TOKEN_PRESENT=False" in o.fail_reason
    finally:
        backend.close()


def test_unspawnable_replica_fails_at_once(tmp_path: Path) -> None:
    backend = make_backend(tmp_path)
    try:
        handle = backend.start(spec("r1", engine="broken"))
        assert handle.record is None
        (o,) = backend.observe()
        assert o.state == ReplicaState.FAILED and o.pid is None
        assert o.fail_reason == "could not start the engine: the builtin engine needs weights"
        with pytest.raises(ValueError, match="already exists"):
            backend.start(spec("r1"))
    finally:
        backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.start(spec("r2"))  # nothing may run unwatched


def test_drain_sigterm_then_sigkill_whole_group(tmp_path: Path, pids: list[int]) -> None:
    backend = make_backend(tmp_path)
    try:
        polite = backend.start(spec("r1", devices=("A100-80GB#0",)))
        child_file = tmp_path / "child.pid"
        stubborn = backend.start(
            spec(
                "r2", "--ignore-sigterm", "--spawn-child", str(child_file), devices=("A100-80GB#1",)
            )
        )
        assert polite.record is not None and stubborn.record is not None
        pids += [polite.record.pid, stubborn.record.pid]
        wait_for(backend, "r1", in_state(ReplicaState.READY))
        wait_for(backend, "r2", in_state(ReplicaState.READY))
        child_pid = int(child_file.read_text())
        pids.append(child_pid)

        backend.mark_draining("r1")
        assert backend.observe()[0].state == ReplicaState.DRAINING
        assert alive(polite.record.pid)  # marking only stops the counting, not the process
        backend.drain("r1", timeout_s=30)
        o1 = wait_for(backend, "r1", in_state(ReplicaState.STOPPED))
        assert o1.exit_code == 0 and o1.fail_reason is None

        backend.drain("r2", timeout_s=0.3)
        o2 = wait_for(backend, "r2", in_state(ReplicaState.STOPPED))
        assert o2.exit_code == -signal.SIGKILL
        wait_until_dead(child_pid)
    finally:
        backend.close()


def wait_until_dead(pid: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid)


def test_adopt_after_restart(tmp_path: Path, pids: list[int]) -> None:
    first = make_backend(tmp_path)
    records: list[ReplicaRecord] = []
    for i in range(2):
        h = first.start(spec(f"r{i}", devices=(f"A100-80GB#{i}",)))
        assert h.record is not None
        records.append(h.record)
        pids.append(h.record.pid)
    for r in records:
        wait_for(first, r.replica_id, in_state(ReplicaState.READY))
    # The server goes away without stopping its replicas (crash, or a restart that keeps them).
    first.close(stop_replicas=False)
    assert all(alive(r.pid) for r in records)
    # The store round-trips records as plain dicts.
    records = [ReplicaRecord.from_dict(r.to_dict()) for r in records]

    # Stale records: a process that is gone, a pid now used by another process (our own), and
    # a live process of ours that does not answer its health check.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    mute = subprocess.Popen([sys.executable, FAKE, "1", "--no-http"], start_new_session=True)
    pids.append(mute.pid)
    while proc_start_ticks(mute.pid) is None:
        time.sleep(0.01)
    base = records[0]
    stale = [
        ReplicaRecord("gone", "dep1", 1, gone.pid, 1, "", (), 1, 0.0),
        ReplicaRecord("reused", "dep1", 1, os.getpid(), 1, "", (), 1, 0.0),
        ReplicaRecord(
            "mute",
            "dep1",
            1,
            mute.pid,
            _closed_port(),
            str(tmp_path / "m.log"),
            ("A100-80GB#3",),
            proc_start_ticks(mute.pid) or 0,
            time.time(),
        ),
    ]

    second = make_backend(tmp_path)
    try:
        result = second.adopt([*records, *stale])
        assert result.adopted == ("r0", "r1")
        assert dict(result.cleaned) == {
            "gone": "its process is gone",
            "reused": "its process is gone",
            "mute": "it did not answer its health check",
        }
        assert alive(os.getpid())  # a reused pid is never signalled
        mute.wait(timeout=WAIT_S)  # killed
        obs = {o.replica_id: o for o in second.observe()}
        assert obs["r0"].state == ReplicaState.READY and obs["r0"].port == base.port
        assert obs["r0"].devices == base.devices
        # Adopting the same records again never makes a second copy.
        again = second.adopt(records)
        assert again.adopted == ("r0", "r1") and again.cleaned == ()
        assert [o.replica_id for o in second.observe()].count("r0") == 1
        o = wait_for(second, "r1", lambda o: o.running == 2)
        assert o.state == ReplicaState.READY
        # Adopted replicas are watched like any other: a crash is noticed.
        os.kill(records[1].pid, signal.SIGKILL)
        failed = wait_for(second, "r1", in_state(ReplicaState.FAILED))
        assert failed.fail_reason is not None and "crashed" in failed.fail_reason
    finally:
        second.close()
    for r in records:
        wait_until_dead(r.pid)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_simulator_replica_serves_and_stops(tmp_path: Path, pids: list[int]) -> None:
    backend = make_backend(tmp_path)
    try:
        h = backend.start(spec("sim1", "--startup-s", "0.2", engine="simulator"))
        assert h.record is not None
        pids.append(h.record.pid)
        o = wait_for(backend, "sim1", lambda o: o.state == ReplicaState.READY and o.running == 0)
        assert (o.running, o.waiting) == (0, 0)
        r = httpx.post(
            f"{o.base_url}/v1/chat/completions",
            json={
                "model": "alice/m",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
            timeout=WAIT_S,
        )
        assert r.status_code == 200, r.text
        # The engine's busy clock reaches the observation (the metric history's busy fraction).
        busy = wait_for(backend, "sim1", lambda o: (o.busy_s or 0.0) > 0.0)
        assert busy.uptime_s is not None and busy.busy_s is not None
        assert busy.busy_s <= busy.uptime_s
        backend.drain("sim1", timeout_s=10)
        stopped = wait_for(backend, "sim1", in_state(ReplicaState.STOPPED))
        assert stopped.exit_code == 0
    finally:
        backend.close()


def test_simulator_fail_start_reason(tmp_path: Path, pids: list[int]) -> None:
    msg = "could not download meta-llama/Llama-2-7b-chat-hf: no network access"
    backend = make_backend(tmp_path)
    try:
        h = backend.start(spec("sim1", "--fail-start", msg, engine="simulator"))
        assert h.record is not None
        pids.append(h.record.pid)
        o = wait_for(backend, "sim1", in_state(ReplicaState.FAILED))
        assert (o.fail_reason, o.exit_code) == (msg, 3)
    finally:
        backend.close()


async def reconcile_until(reconciler: Reconciler, done: Callable[[], bool], what: str) -> None:
    """Run the real reconciler's passes until `done()`; WAIT_S guards against a hang."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}; observed {reconciler.backend.observe()}")
        await reconciler.run_once()
        await asyncio.sleep(0.02)


def make_reconciler(backend: LocalBackend, store: MemoryStore, policy: RestartPolicy) -> Reconciler:
    return Reconciler(
        backend=backend,
        routing=FakeRouting(),
        store=store,
        inventory=INV,
        policy=policy,
        drain_timeout_s=5.0,
    )


async def test_repeated_start_failures_end_errored_with_the_engine_reason(
    tmp_path: Path, pids: list[int]
) -> None:
    msg = "could not download meta-llama/Llama-2-7b-chat-hf: no network access to the Hub"
    policy = RestartPolicy(backoff_base_s=0.05, backoff_max_s=0.2, max_start_failures=3)
    backend = make_backend(tmp_path)
    store = MemoryStore()
    row = store.add(Row("dep1", engine="simulator", engine_args=("--fail-start", msg)))
    reconciler = make_reconciler(backend, store, policy)
    try:
        await reconcile_until(reconciler, lambda: row.status == "errored", "errored")
        assert row.fail_reason == msg
        assert len(store.replicas) == 3
        assert all(r.state == "failed" and r.fail_reason == msg for r in store.replicas.values())
        pids += [r.record.pid for r in store.replicas.values() if r.record is not None]
        # Errored starts nothing more.
        for _ in range(5):
            await reconciler.run_once()
        assert len(store.replicas) == 3
    finally:
        backend.close()
        reconciler.close()


async def test_killed_replica_is_replaced_after_backoff(tmp_path: Path, pids: list[int]) -> None:
    policy = RestartPolicy(backoff_base_s=0.05, backoff_max_s=0.2)
    backend = make_backend(tmp_path)
    store = MemoryStore()
    row = store.add(Row("dep1", engine="fake"))
    reconciler = make_reconciler(backend, store, policy)
    try:
        await reconcile_until(reconciler, lambda: row.status == "ready", "ready")
        (victim,) = backend.observe()
        assert victim.pid is not None
        pids.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        await reconcile_until(
            reconciler,
            lambda: store.replicas[victim.replica_id].state == "failed" and row.status == "ready",
            "replaced",
        )
        assert len(store.replicas) == 2
        assert store.replicas[victim.replica_id].fail_reason is not None
        (new,) = [o for o in backend.observe() if o.state == ReplicaState.READY]
        assert new.replica_id != victim.replica_id
        assert new.devices == victim.devices  # the crashed replica's device is free again
        assert new.pid is not None
        pids.append(new.pid)
        assert "replica_failed" in store.kinds("dep1")
    finally:
        backend.close()
        reconciler.close()
