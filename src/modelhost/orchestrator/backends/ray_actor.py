"""The Ray actor of one replica: it runs on the node Ray chose and owns the engine process there.

`EngineHost` is a plain class (the Ray backend wraps it with `ray.remote`), so its process
handling is tested without Ray. On its node it builds the same command line and environment the
local backend builds (modelhost.runtimes), with the engine bound to the node's address, spawns
the engine in its own session and process group with its output in a log file on the node, and
answers the control plane's polls: the exit status (with the reason the local backend would
give), and what the log grew by, which the control plane mirrors into its own data dir (so the
logs API, `follow` included, reads the mirror as it reads a local replica's log).

The engine never outlives its actor:
- the engine is spawned by a thread that waits on it for its whole life, and the child sets
  PR_SET_PDEATHSIG(SIGKILL) before exec: when the actor's process dies (ray.kill, a node lost,
  a crash), the kernel kills the engine;
- a graceful exit of the actor (`shutdown`, `atexit`) kills the engine's whole process group.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost.domain.replicas import CPU_TYPE, Device, LaunchSpec
from modelhost.orchestrator.backends.local_process import (
    BACKEND_LINE_PREFIX,
    child_env,
    describe_exit,
    exit_reason,
    read_tail,
    signal_group,
    spawn_engine,
)
from modelhost.runtimes import resolve

_PR_SET_PDEATHSIG = 1
# The most log bytes one poll carries back to the control plane.
LOG_CHUNK_BYTES = 256 * 1024


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that spawned us ends (it waits on the
    engine for the actor's whole life, so: when the actor's process dies)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _has_nvidia() -> bool:
    return Path("/dev/nvidiactl").exists()


def node_devices(gpu_type: str, gpu_ids: list[int], count: int, real: bool) -> list[Device]:
    """The devices of a replica on its node: the CUDA indexes Ray gave its actor when the node
    has real GPUs, else virtual ones (the engine then runs on the CPU, as locally)."""
    if gpu_type == CPU_TYPE:
        return [Device("cpu#0", CPU_TYPE, 0, True)]
    if real and gpu_ids:
        return [Device(f"cuda#{i}", gpu_type, i, False) for i in gpu_ids]
    return [Device(f"{gpu_type}#{i}", gpu_type, i, True) for i in range(max(count, 1))]


def bind_host(cmd: list[str], host: str) -> list[str]:
    """The runtime's command with the engine bound to `host` instead of 127.0.0.1."""
    out = list(cmd)
    for i, arg in enumerate(out[:-1]):
        if arg == "--host":
            out[i + 1] = host
    return out


@dataclass
class _Engine:
    popen: subprocess.Popen[bytes]
    exit_code: int | None = None
    exited: bool = False


class EngineHost:
    """One replica's engine on a Ray node (a detached, named actor; see the module doc)."""

    def __init__(
        self,
        replica_id: str,
        launch: LaunchSpec,
        log_path: str,
        *,
        node_host: str | None = None,
        gpu_ids: list[int] | None = None,
        real_gpus: bool | None = None,
        num_devices: int = 1,
    ) -> None:
        self.replica_id = replica_id
        self.launch_spec = launch
        self.log_path = log_path
        self._node_host = node_host
        self._gpu_ids = gpu_ids
        self._real = real_gpus
        self._num_devices = num_devices
        self._engine: _Engine | None = None
        self._lock = threading.Lock()
        self._kill_timer: threading.Timer | None = None
        self.host = ""
        self.port = 0
        atexit.register(self.shutdown)

    # --- called by the control plane ------------------------------------------------------
    def launch(self) -> dict[str, Any]:
        """Spawn the engine; returns where it listens (or why it could not be spawned)."""
        host, gpu_ids, real = self._where()
        try:
            runtime = resolve(self.launch_spec.engine)
            devices = node_devices(self.launch_spec.gpu_type, gpu_ids, self._num_devices, real)
            port = _free_port(host)
            cmd = bind_host(runtime.command(self.launch_spec, port, devices), host)
            env = child_env(os.environ, runtime.env(self.launch_spec, devices))
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                out.write(
                    f"{BACKEND_LINE_PREFIX}starting replica {self.replica_id} on Ray node "
                    f"{host} (engine {runtime.name}, port {port}, devices "
                    f"{','.join(d.device_id for d in devices)})\n".encode()
                )
                out.flush()
                started = threading.Event()
                box: dict[str, Any] = {}
                waiter = threading.Thread(
                    target=self._spawn_and_wait,
                    args=(cmd, env, out, started, box),
                    name=f"engine-{self.replica_id}",
                    daemon=True,
                )
                waiter.start()
                started.wait()
            if "error" in box:
                raise box["error"]
        except (OSError, ValueError) as exc:
            return {"error": f"could not start the engine: {exc}", "host": host}
        self.host, self.port = host, port
        return self.launch_info() or {"error": "the engine did not start"}

    def poll(self, log_offset: int, was_ready: bool) -> dict[str, Any]:
        """The engine's state and the log bytes past `log_offset` (at most LOG_CHUNK_BYTES)."""
        engine = self._engine
        result: dict[str, Any] = {"exited": False, "exit_code": None}
        if engine is not None and engine.exited:
            result["exited"], result["exit_code"] = True, engine.exit_code
            result["reason"] = exit_reason(read_tail(self.log_path), engine.exit_code, was_ready)
            result["how"] = describe_exit(engine.exit_code)
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                start = min(max(log_offset, 0), size)
                f.seek(start)
                result["log"] = f.read(min(LOG_CHUNK_BYTES, size - start))
                result["log_offset"] = start
        except OSError:
            result["log"], result["log_offset"] = b"", log_offset
        return result

    def terminate(self, kill_after_s: float) -> None:
        """SIGTERM to the engine's group now, SIGKILL after `kill_after_s` if it is still up."""
        engine = self._engine
        if engine is None or engine.exited:
            return
        signal_group(engine.popen.pid, signal.SIGTERM)
        with self._lock:
            if self._kill_timer is None:
                self._kill_timer = threading.Timer(max(kill_after_s, 0.0), self._kill)
                self._kill_timer.daemon = True
                self._kill_timer.start()

    def shutdown(self) -> None:
        """Kill the engine's whole group (the actor is about to go)."""
        self._kill()

    def launch_info(self) -> dict[str, Any] | None:
        """Where the engine listens, for a control plane adopting this replica; None before
        `launch`."""
        engine = self._engine
        if engine is None or not self.port:
            return None
        return {
            "host": self.host,
            "port": self.port,
            "pid": engine.popen.pid,
            "node_id": self._node_id(),
            "actor_pid": os.getpid(),
        }

    def _node_id(self) -> str | None:
        try:
            import ray
        except ImportError:
            return None
        api: Any = ray
        if not api.is_initialized():
            return None
        return str(api.get_runtime_context().get_node_id())

    # --- internals -------------------------------------------------------------------------
    def _where(self) -> tuple[str, list[int], bool]:
        host, gpu_ids, real = self._node_host, self._gpu_ids, self._real
        if host is None or gpu_ids is None:
            import ray

            api: Any = ray
            host = host or str(api.util.get_node_ip_address())
            if gpu_ids is None:
                gpu_ids = [int(i) for i in api.get_gpu_ids()]
        if real is None:
            real = _has_nvidia()
        return host, gpu_ids, real

    def _kill(self) -> None:
        engine = self._engine
        if engine is not None and not engine.exited:
            signal_group(engine.popen.pid, signal.SIGKILL)

    def _spawn_and_wait(
        self,
        cmd: list[str],
        env: dict[str, str],
        out: Any,
        started: threading.Event,
        box: dict[str, Any],
    ) -> None:
        try:
            # _die_with_parent: only prctl, safe in the child.
            popen = spawn_engine(cmd, env, out, str(Path(self.log_path).parent), _die_with_parent)
        except OSError as exc:
            box["error"] = exc
            started.set()
            return
        self._engine = _Engine(popen)
        started.set()
        code = popen.wait()
        # Whatever the engine left behind in its group goes with it.
        signal_group(popen.pid, signal.SIGKILL)
        self._engine.exit_code, self._engine.exited = code, True
        with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{BACKEND_LINE_PREFIX}engine exited ({describe_exit(code)})\n")
