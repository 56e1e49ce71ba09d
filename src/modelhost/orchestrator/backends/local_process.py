"""Operating-system facts about local replica processes, for the local backend.

Identifying a process beyond its pid (start time from /proc), signalling its process group,
finding a free loopback port, building the child's environment, and turning a replica's log tail
and exit status into a reason a user can act on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from modelhost.engine.args import FATAL_PREFIX

# Lines the backend itself writes into replica logs start with this, so the fail-reason parser
# can tell them from the engine's own output.
BACKEND_LINE_PREFIX = "[modelhost] "

# Server settings that must not reach engine processes: credentials of the control plane, and
# the server's own hub token (a replica gets only its deployment's token, via secret_env).
_KEEP_MODELHOST_ENV = frozenset({"MODELHOST_CACHE_DIR"})
_DROP_ENV = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})

_TAIL_BYTES = 16 * 1024
_MAX_REASON_LINE = 300


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from /proc/<pid>/stat, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_start_ticks(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[1] if stat else None


def is_same_process(pid: int, start_ticks: int) -> bool:
    """The pid runs (not a zombie) and is the very process that started at `start_ticks`."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == start_ticks


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a replica's whole process group; False when nothing is left to signal."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def reap(pid: int) -> tuple[bool, int | None]:
    """(exited, exit code) for a pid that may or may not be our child. A process started by a
    previous backend in this same server process is our child and must be reaped here, or it
    stays a zombie."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False, None
    if done == 0:
        return False, None
    return True, os.waitstatus_to_exitcode(status)


def free_port(avoid: set[int]) -> int:
    """A loopback port nothing listens on now. The engine binds it a moment later; a port
    taken in between makes that start fail with a clear log line, and the planner retries."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError("no free port on 127.0.0.1")


def child_env(server_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in server_env.items()
        if k not in _DROP_ENV and (not k.startswith("MODELHOST_") or k in _KEEP_MODELHOST_ENV)
    }
    env.update(extra)
    return env


def spawn_engine(
    cmd: list[str],
    env: Mapping[str, str],
    out: IO[bytes],
    cwd: str | Path,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.Popen[bytes]:
    """Start an engine in its own process group (a stop reaches all it spawns), output to `out`."""
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec_fn,
    )


def read_tail(path: str | Path, max_bytes: int = _TAIL_BYTES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line is probably cut
    return lines


def fatal_line(lines: list[str]) -> str | None:
    """The message of the last fatal line the engine printed, if any."""
    for line in reversed(lines):
        idx = line.find(FATAL_PREFIX)
        if idx >= 0:
            message = line[idx + len(FATAL_PREFIX) :].strip()
            if message:
                return message
    return None


def _kv_cache_too_small(m: re.Match[str]) -> str:
    fits = re.search(r"estimated maximum model length is (\d+)", m.string)
    hint = f"--context-length {fits.group(1)} or less" if fits else "a smaller --context-length"
    return (
        f"out of memory for the KV cache: one request at the model's full context "
        f"({m.group(1)} tokens) needs {m.group(2)} GiB of KV cache, {m.group(3)} GiB is "
        f"available; set {hint} in engine_args, or give the replica more memory (more or "
        "larger GPUs, a quantized model, --kv-cache-gb on CPUs)"
    )


# vLLM's fatal errors (it prints a traceback and exits; the launcher cannot catch them after
# its exec), each as a reason a user can act on. Searched newest line first; vLLM logs the root
# cause above its closing "Engine core initialization failed" line.
_ENGINE_ERRORS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(
            r"max seq len \((\d+)\), \(([\d.]+) GiB KV cache is needed, which is larger "
            r"than the available KV cache memory \(([\d.]+) GiB\)"
        ),
        _kv_cache_too_small,
    ),
    (
        re.compile(r"No available memory for the cache blocks"),
        lambda m: (
            "out of memory: nothing is left for the KV cache once the weights are loaded; use "
            "more or larger GPUs (num_gpus, gpu), a quantized model (quantization), or on CPUs "
            "a larger --kv-cache-gb"
        ),
    ),
    (
        re.compile(r"(?:CUDA out of memory|OutOfMemoryError)(.*)"),
        lambda m: (
            "out of GPU memory: the model does not fit on this replica's GPUs; use more GPUs "
            "(num_gpus), a GPU type with more memory, a quantized model (quantization) or a "
            "smaller --context-length"
        ),
    ),
    (
        re.compile(r"Free memory on device (\S+) \(([\d./]+) GiB\) on startup is less than"),
        lambda m: (
            f"the GPU {m.group(1)} has only {m.group(2)} GiB free: another process is using "
            "it; free it, or lower --gpu-memory-utilization in engine_args"
        ),
    ),
    (
        re.compile(r"Model architectures? (\[[^\]]*\]|\S+) (?:are|is) not supported"),
        lambda m: (
            f"vLLM does not support this model's architecture {m.group(1)}; use a model "
            "vLLM lists as supported, or engine builtin (Llama-family models)"
        ),
    ),
    (
        re.compile(r"(Unknown quantization method: .*|Quantization method specified in the .*)"),
        lambda m: f"the quantization does not fit the weights: {m.group(1).strip()}",
    ),
    (
        re.compile(
            r"User-specified max_model_len \((\d+)\) is greater than the derived "
            r"max_model_len \((?:max_position_embeddings=)?([\d.]+)"
        ),
        lambda m: (
            f"--context-length {m.group(1)} exceeds the model's maximum of "
            f"{int(float(m.group(2)))} tokens; set --context-length {int(float(m.group(2)))} "
            "or less in engine_args"
        ),
    ),
    (
        re.compile(r"^\S*api_server\.py: error: (.+)$"),
        lambda m: f"vLLM refused its command line: {m.group(1).strip()}",
    ),
    (
        re.compile(r"(?:Repository Not Found|RepositoryNotFoundError|GatedRepoError)"),
        lambda m: (
            "the Hugging Face repo was not found or needs access: check hf.repo and "
            "hf.revision, and give a token (hf.token) that may read it"
        ),
    ),
    (
        # vLLM validates its config with pydantic: the message of any other refused setting.
        re.compile(r"^\s*Value error, (.+?)(?: \[type=\w+.*)?$"),
        lambda m: f"vLLM refused the configuration: {m.group(1).strip()}",
    ),
)


def engine_error(lines: list[str]) -> str | None:
    """A known fatal error of a third-party engine (vLLM) in the log tail, in words a user can
    act on, or None."""
    for line in reversed(lines):
        if line.startswith(BACKEND_LINE_PREFIX):
            continue
        for pattern, describe in _ENGINE_ERRORS:
            m = pattern.search(line)
            if m:
                reason = describe(m)
                return reason if len(reason) <= 2 * _MAX_REASON_LINE else reason[:600] + "..."
    return None


def last_output_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(BACKEND_LINE_PREFIX):
            return text if len(text) <= _MAX_REASON_LINE else text[:_MAX_REASON_LINE] + "..."
    return None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def exit_reason(lines: list[str], code: int | None, was_ready: bool) -> str:
    """Why a replica ended: the engine's fatal line verbatim, else a known fatal error of a
    third-party engine, else what we know about it."""
    fatal = fatal_line(lines) or engine_error(lines)
    if fatal:
        return fatal
    phase = "crashed" if was_ready else "exited before becoming ready"
    reason = f"replica {phase} ({describe_exit(code)})"
    last = last_output_line(lines)
    return f"{reason}; last output: {last}" if last else reason
