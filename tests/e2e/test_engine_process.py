"""`python -m modelhost.engine --engine simulator` as a real process on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion

pytestmark = pytest.mark.e2e

MODEL = "acme/sim"
START_DEADLINE_S = 60.0  # a generous upper bound on a loaded machine, not a performance goal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.stderr_path = tmp / f"engine-{self.port}.err"
        argv = [
            sys.executable, "-m", "modelhost.engine", "--engine", "simulator",
            "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", MODEL,
            "--max-batch-size", "4", *extra,
        ]  # fmt: skip
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.url = f"http://127.0.0.1:{self.port}"

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=5)
        except httpx.TransportError:
            return None

    def wait_health(self, status: int) -> httpx.Response:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            r = self.health()
            if r is not None and r.status_code == status:
                return r
            time.sleep(0.05)
        raise AssertionError(f"no /health {status} in time: {self.stderr()}")

    def wait_exit(self) -> int:
        return self.proc.wait(timeout=START_DEADLINE_S)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for e in started:
        e.stop()


def test_serves_openai_streams_and_drains_on_sigterm(tmp_path: Path, engines: list[Engine]) -> None:
    eng = Engine(tmp_path, "--startup-s", "0.3", "--tpot-ms", "5", "--drain-timeout", "30")
    engines.append(eng)
    eng.wait_health(200)
    client = openai.OpenAI(base_url=f"{eng.url}/v1", api_key="unused", max_retries=0)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text and finishes[-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12

    # SIGTERM mid-stream: the stream in flight still completes, then the process exits 0.
    long = client.completions.create(
        model=MODEL,
        prompt="go on",
        max_tokens=150,
        stream=True,
        stream_options={"include_usage": True},
    )
    done_chunks: list[Completion] = []
    for chunk in long:
        if not done_chunks:
            eng.proc.send_signal(signal.SIGTERM)
        done_chunks.append(chunk)
    assert done_chunks[-2].choices[0].finish_reason == "length"
    assert done_chunks[-1].usage is not None and done_chunks[-1].usage.completion_tokens == 150
    assert eng.wait_exit() == 0, eng.stderr()
    assert "modelhost-fatal" not in eng.stderr()


def test_health_is_503_while_starting_and_sigterm_then_exits_0(
    tmp_path: Path, engines: list[Engine]
) -> None:
    eng = Engine(tmp_path, "--startup-s", "600")
    engines.append(eng)
    r = eng.wait_health(503)
    assert r.json() == {"error": "unhealthy", "error_type": "healthcheck"}
    eng.proc.send_signal(signal.SIGTERM)
    assert eng.wait_exit() == 0, eng.stderr()


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--startup-s", "0", "--fail-start", "weights not found at /models/x"],
         "modelhost-fatal: weights not found at /models/x"),
        (["--no-such-simulator-flag"], "modelhost-fatal: invalid simulator flags"),
    ],
)  # fmt: skip
def test_a_failed_start_prints_the_fatal_line_and_exits_3(
    tmp_path: Path, engines: list[Engine], flags: list[str], line: str
) -> None:
    eng = Engine(tmp_path, *flags)
    engines.append(eng)
    assert eng.wait_exit() == 3
    fatal = [ln for ln in eng.stderr().splitlines() if ln.startswith("modelhost-fatal: ")]
    assert len(fatal) == 1 and fatal[0].startswith(line), eng.stderr()


def test_a_port_in_use_is_a_fatal_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [
            sys.executable, "-m", "modelhost.engine", "--engine", "simulator",
            "--port", str(port), "--served-model-name", MODEL,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=START_DEADLINE_S)
    assert done.returncode == 3
    assert f"modelhost-fatal: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_client_that_goes_away_frees_its_slot(tmp_path: Path, engines: list[Engine]) -> None:
    eng = Engine(tmp_path, "--startup-s", "0")  # --max-batch-size 4
    engines.append(eng)
    eng.wait_health(200)

    def stats() -> tuple[int, int]:
        s = httpx.get(f"{eng.url}/stats", timeout=5).json()
        return s["running"], s["waiting"]

    def wait_for(want: tuple[int, int]) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while stats() != want:
            assert time.monotonic() < deadline, f"stats stuck at {stats()}, wanted {want}"
            time.sleep(0.02)

    def raw_request(body: dict[str, object]) -> socket.socket:
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", eng.port))
        head = f"POST /v1/completions HTTP/1.1\r\nHost: e\r\nContent-Length: {len(data)}\r\n\r\n"
        sock.sendall(head.encode() + data)
        return sock

    long = {"prompt": "x", "max_tokens": 4000}
    socks = [raw_request({**long, "stream": True}) for _ in range(4)]
    socks.append(raw_request(long))  # the fifth waits for a batch slot
    wait_for((4, 1))
    socks.pop().close()  # gone while queued
    wait_for((4, 0))
    for s in socks:
        s.close()  # gone mid-stream
    wait_for((0, 0))
