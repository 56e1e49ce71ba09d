"""GPU-time billing against a stopwatch (R13): a real `modelhost serve` with a simulator replica
on 2 virtual A100s, its control plane SIGKILLed and restarted in the middle of the replica's
life; the replica's billed GPU-seconds must be its process lifetime x 2, within max(1%, 2 s),
counted once."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import psutil

from tests.conftest import ServeProcess, wait_until
from tests.e2e.deployments import create, replica_pids, wait_status

METERING = {"MODELHOST_METERING_INTERVAL_S": "1"}


def _process_start(pid: int) -> float:
    """When `pid` started (wall clock), to the kernel's clock tick: its start in ticks since
    boot against the uptime now. (psutil's create_time adds the boot time, which the kernel
    gives in whole seconds: up to a second off.)"""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    now = time.time()
    start_ticks = int(fields[19])  # field 22 of stat: starttime
    return now - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _billed_ms(serve: ServeProcess, replica_pid: int) -> tuple[int, int]:
    """(gpu_ms, rows) billed for the replica whose process was `replica_pid`."""
    db = sqlite3.connect(serve.data_dir / "modelhost.db")
    try:
        (replica_id,) = db.execute(
            "SELECT id FROM replicas WHERE pid = ?", (replica_pid,)
        ).fetchone()
        gpu_ms, rows = db.execute(
            "SELECT COALESCE(SUM(gpu_ms), 0), COUNT(*) FROM gpu_usage WHERE replica_id = ?",
            (replica_id,),
        ).fetchone()
    finally:
        db.close()
    return int(gpu_ms), int(rows)


def _exit_recorded(serve: ServeProcess, replica_pid: int) -> bool:
    db = sqlite3.connect(serve.data_dir / "modelhost.db")
    try:
        row = db.execute("SELECT exited_at FROM replicas WHERE pid = ?", (replica_pid,)).fetchone()
    finally:
        db.close()
    return row is not None and row[0] is not None


def test_gpu_time_is_billed_by_the_stopwatch_through_a_control_plane_crash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    args = ["--gpus", "A100-80GB:8"]
    first = ServeProcess(data, args, **METERING)
    second: ServeProcess | None = None
    try:
        dep = create(first, "billed", num_gpus=2, settings={"min_instances": 1, "max_instances": 1})
        wait_status(first, dep["deploy_id"], "ready")
        [pid] = replica_pids(first)
        started = _process_start(pid)
        time.sleep(3)
        # A crash: no final checkpoint. The replica runs on, unmetered until the restart.
        first.stop(signal.SIGKILL)
        time.sleep(2)
        second = ServeProcess(data, args, **METERING)
        wait_status(second, dep["deploy_id"], "ready")
        time.sleep(3)
        assert second.client.post(f"/deploy/{dep['deploy_id']}/stop").status_code == 200
        wait_until(lambda: _gone(pid), timeout=30, interval=0.02, what="the replica to exit")
        exited = time.time()
        lifetime_ms = (exited - started) * 1000

        # The exit is checkpointed at the metering pass after the server saw it.
        wait_until(lambda: _exit_recorded(second, pid), timeout=15, what="the exit recorded")
        time.sleep(2.5)
        billed, rows = _billed_ms(second, pid)
        assert abs(billed / 2 - lifetime_ms) <= max(0.01 * lifetime_ms, 2000), (
            billed / 2,
            lifetime_ms,
        )
        print(f"billed {billed / 2:.0f} ms of GPU time for a {lifetime_ms:.0f} ms lifetime")
        # More passes change nothing: each period is written once, only upward, to the exit.
        time.sleep(2.5)
        assert _billed_ms(second, pid) == (billed, rows)
        assert rows >= 1
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop(signal.SIGTERM)
