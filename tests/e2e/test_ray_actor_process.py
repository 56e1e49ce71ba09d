"""The Ray replica actor's process handling without Ray (`EngineHost` is a plain class): it
spawns the real simulator engine bound to the node's address, reports its exit with the local
backend's reasons, hands its log over in chunks, drains it, and the engine never outlives the
actor's process (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import psutil
import pytest

from modelhost.domain.replicas import LaunchSpec
from modelhost.orchestrator.backends.ray_actor import EngineHost
from tests.ray_cluster import wait_for

pytestmark = pytest.mark.e2e

A100 = "A100-80GB"


def sim(*args: str) -> LaunchSpec:
    return LaunchSpec(
        engine="simulator",
        served_model_name="u/m",
        max_batch_size=4,
        engine_args=("--startup-s", "0.1", *args),
        gpu_type=A100,
        num_gpus=1,
    )


def host(tmp_path: Path, launch: LaunchSpec) -> EngineHost:
    return EngineHost(
        "r1", launch, str(tmp_path / "node" / "r1.log"), node_host="127.0.0.1", gpu_ids=[0]
    )


def healthy(info: dict[str, object]) -> bool:
    try:
        return httpx.get(f"http://{info['host']}:{info['port']}/health", timeout=2).is_success
    except httpx.HTTPError:
        return False


def test_launch_probe_drain_and_log_chunks(tmp_path: Path) -> None:
    h = host(tmp_path, sim())
    info = h.launch()
    assert info["host"] == "127.0.0.1" and int(str(info["port"])) > 0, info
    wait_for(lambda: healthy(info), 60, "the engine to answer /health")
    first = h.poll(0, False)
    assert first["exited"] is False and first["log_offset"] == 0
    text = first["log"].decode()
    assert "starting replica r1 on Ray node 127.0.0.1" in text
    assert "--device" not in text  # the command line is not logged, its outcome is
    # The next poll carries only what was written since.
    again = h.poll(len(first["log"]), False)
    assert again["log_offset"] == len(first["log"])
    # A virtual GPU: the engine sees no CUDA device, and runs on the CPU.
    env = psutil.Process(int(str(info["pid"]))).environ()
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["MODELHOST_VIRTUAL_DEVICES"] == f"{A100}#0"
    h.terminate(5.0)
    done = wait_for(lambda: (p := h.poll(0, True))["exited"] and p, 30, "the engine to exit")
    assert done["exit_code"] == 0, done
    assert h.launch_info() is not None


def test_an_engine_that_cannot_start_reports_the_reason(tmp_path: Path) -> None:
    h = host(tmp_path, sim("--no-such-flag"))
    h.launch()
    done = wait_for(lambda: (p := h.poll(0, False))["exited"] and p, 60, "the engine to exit")
    # The engine's own fatal line, as the local backend reports it.
    assert done["exit_code"] == 3
    assert done["reason"] == "invalid simulator flags: unrecognized arguments: --no-such-flag"


_ACTOR = textwrap.dedent(
    """
    import sys, time
    from modelhost.domain.replicas import LaunchSpec
    from modelhost.orchestrator.backends.ray_actor import EngineHost
    launch = LaunchSpec(engine="simulator", served_model_name="u/m", max_batch_size=4,
                        engine_args=("--startup-s", "0.1"), gpu_type="A100-80GB", num_gpus=1)
    h = EngineHost("r1", launch, sys.argv[1], node_host="127.0.0.1", gpu_ids=[0])
    print(h.launch()["pid"], flush=True)
    time.sleep(600)
    """
)


def test_the_engine_dies_with_its_actors_process(tmp_path: Path) -> None:
    """ray.kill and a lost node SIGKILL the actor's process: no atexit runs, the kernel's
    parent-death signal takes the engine down."""
    actor = subprocess.Popen(
        [sys.executable, "-c", _ACTOR, str(tmp_path / "r1.log")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert actor.stdout is not None
        engine_pid = int(actor.stdout.readline())
        assert psutil.pid_exists(engine_pid)
        # Its own session and group (a stop reaches everything it spawned), not the actor's.
        assert os.getpgid(engine_pid) == engine_pid
        actor.send_signal(signal.SIGKILL)
        actor.wait(10)
        wait_for(
            lambda: (
                not psutil.pid_exists(engine_pid)
                or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE
            ),
            10,
            "the engine to die with its actor",
        )
    finally:
        if actor.poll() is None:
            actor.kill()
