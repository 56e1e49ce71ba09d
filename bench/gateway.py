"""Gateway overhead (issue 10): one simulator replica with zero model time, called directly,
through modelhost's gateway, and through LiteLLM's proxy, side by side in one run.

- direct:    the replica's own OpenAI API (`python -m modelhost.engine --engine simulator`, no
             model time: `--ttft-ms 0 --tpot-ms 0 --prefill-ms-per-token 0`).
- modelhost: a real `modelhost serve` whose deployment `admin/bench` runs that replica; the
             gateway authenticates the token, resolves the model, admits the request and
             proxies it. The replica measured directly is this deployment's own replica, so all
             peers call the same process.
- litellm:   LiteLLM's proxy (`pip install 'litellm[proxy]'` in its own venv, --litellm-python)
             with one model_list entry, `openai/admin/bench` at the replica's /v1 base URL.

For each mode (plain and streaming chat completions, --max-tokens tokens each) and each level,
C clients each send requests back to back over one keep-alive connection until --requests are
done; every peer runs a level before the next level starts, so load drifts less between peers
than between whole per-peer runs. The client is a minimal HTTP/1.1 client on uvloop (it costs
the shared CPU as little as a Python client can). Reported: req/s, p50/p95 latency of the whole
response, the p50 added to direct, and throughput as a ratio of direct. Results go to
bench/results/gateway-<time>.json and a markdown table to stdout.

    .venv/bin/python bench/gateway.py                         # all peers, 8 and 64 clients
    .venv/bin/python bench/gateway.py --peers direct,modelhost --requests 4000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from modelhost_server import ROOT, deploy_and_wait, free_port, serve_command, serve_env

TOKEN = "mh_bench_admin_token_0123456789abcdef"
LITELLM_KEY = "sk-bench-0123456789"
MODES = ("plain", "stream")


# -- a minimal HTTP/1.1 keep-alive client ------------------------------------------------------
class Connection:
    """One keep-alive connection: POST a body, read the whole answer (Content-Length or
    chunked). No parsing beyond what HTTP/1.1 framing needs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self.reader, self.writer

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self._open()
        writer.write(head + body)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked = close = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            data = b"".join(parts)
        elif length is not None:
            data = await reader.readexactly(length)
        else:
            data = await reader.read()
            close = True
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass(frozen=True)
class Target:
    """How to call one peer: its port, path, auth header and model name."""

    name: str
    port: int
    path: str
    token: str
    model: str
    # The processes on this peer's path, whose CPU time is measured: replica, gateway.
    pids: tuple[tuple[str, int], ...] = ()

    def request(self, stream: bool, max_tokens: int) -> tuple[bytes, bytes]:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": "Say something short."}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
        ).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
            f"authorization: Bearer {self.token}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        return head, body


def answered(status: int, data: bytes, stream: bool) -> bool:
    if status != 200:
        return False
    if stream:
        return data.rstrip().endswith(b"data: [DONE]")
    return b'"choices"' in data


@dataclass
class LevelResult:
    peer: str
    mode: str
    clients: int
    requests: int
    errors: int
    wall_s: float
    req_per_s: float
    p50_ms: float
    p95_ms: float
    # CPU time per request of each process (the replica, each gateway, this client), from
    # /proc: what the peer costs independently of how the 2 cores were shared.
    cpu_us_per_req: dict[str, float] = field(default_factory=dict)
    repeat: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its exited children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run_level(
    target: Target,
    mode: str,
    clients: int,
    requests: int,
    max_tokens: int,
    pids: dict[str, int] | None = None,
) -> LevelResult:
    stream = mode == "stream"
    head, body = target.request(stream, max_tokens)
    left = requests
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal left, errors
        conn = Connection(target.port)
        try:
            while left > 0:
                left -= 1
                started = time.perf_counter()
                try:
                    status, data = await conn.post(head, body)
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    errors += 1
                    print(f"  {target.name}: {exc!r}", file=sys.stderr)
                    continue
                if answered(status, data, stream):
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                    if errors <= 3:
                        print(f"  {target.name}: {status} {data[:300]!r}", file=sys.stderr)
        finally:
            conn.close()

    pids = pids or {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["client"] = time.process_time() - client_before
    done = max(1, len(latencies))
    return LevelResult(
        peer=target.name,
        mode=mode,
        clients=clients,
        requests=len(latencies),
        errors=errors,
        wall_s=wall,
        req_per_s=len(latencies) / wall if wall else 0.0,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        cpu_us_per_req={name: round(t / done * 1e6, 1) for name, t in cpu.items()},
    )


# -- the peers' processes ------------------------------------------------------------------------
def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, headers: Any = None) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer; see {log}")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_modelhost(work: Path, max_batch: int) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """`modelhost serve` with deployment admin/bench (one simulator replica, zero model time);
    returns the server, its port, and the replica's port and pid."""
    port = free_port()
    data = work / "data"
    log = work / "modelhost.log"
    proc = start(serve_command(port, data, "--gpus", "A100-80GB:1"), serve_env(TOKEN), log)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, log)
    body = {
        "model_name": "bench",
        "gpu": "A100-80GB",
        "engine": "simulator",
        "max_batch_size": max_batch,
        "engine_args": ["--ttft-ms", "0", "--tpot-ms", "0", "--prefill-ms-per-token", "0"],
    }
    deploy_id = deploy_and_wait(
        base, TOKEN, body, timeout_s=120, poll_s=0.2, label="modelhost", log=log
    )
    db = sqlite3.connect(data / "modelhost.db")
    try:
        [(replica_port, replica_pid)] = db.execute(
            "SELECT port, pid FROM replicas WHERE exited_at IS NULL AND deploy_id = ?",
            (deploy_id,),
        ).fetchall()
    finally:
        db.close()
    return proc, port, int(replica_port), int(replica_pid)


def start_litellm(
    work: Path, python: str, replica_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/admin/bench\n"
        f"      api_base: http://127.0.0.1:{replica_port}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        # No fetch of the model cost map from the internet at start (there is none here).
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    env.pop("PYTHONPATH", None)
    litellm = str(Path(python).parent / "litellm")
    cmd = [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    log = work / "litellm.log"
    proc = start(cmd, env, log)
    wait_http(
        f"http://127.0.0.1:{port}/health/liveliness",
        proc,
        log,
        headers={"authorization": f"Bearer {LITELLM_KEY}"},
    )
    return proc, port


# -- the run -----------------------------------------------------------------------------------
async def run_all(targets: list[Target], args: argparse.Namespace) -> list[LevelResult]:
    results: list[LevelResult] = []
    for t in targets:  # warm-up: first-call costs (imports, connection pools) paid here
        for mode in MODES:
            await run_level(t, mode, 4, 50, args.max_tokens)
    for repeat in range(args.repeats):
        for clients in args.levels:
            for mode in MODES:
                for t in targets:
                    r = await run_level(
                        t, mode, clients, args.requests, args.max_tokens, dict(t.pids)
                    )
                    r.repeat = repeat
                    print(
                        f"  {t.name:9s} {mode:6s} c={clients:3d}: {r.req_per_s:7.1f} req/s, "
                        f"p50 {r.p50_ms:6.2f} ms p95 {r.p95_ms:6.2f} ms ({r.requests} ok, "
                        f"{r.errors} errors, load {os.getloadavg()[0]:.1f})",
                        file=sys.stderr,
                    )
                    results.append(r)
    return results


def medians(results: list[LevelResult]) -> dict[tuple[str, str, int], LevelResult]:
    groups: dict[tuple[str, str, int], list[LevelResult]] = {}
    for r in results:
        groups.setdefault((r.peer, r.mode, r.clients), []).append(r)
    return {
        key: LevelResult(
            peer=key[0],
            mode=key[1],
            clients=key[2],
            requests=sum(r.requests for r in rs),
            errors=sum(r.errors for r in rs),
            wall_s=sum(r.wall_s for r in rs),
            req_per_s=statistics.median(r.req_per_s for r in rs),
            p50_ms=statistics.median(r.p50_ms for r in rs),
            p95_ms=statistics.median(r.p95_ms for r in rs),
            cpu_us_per_req={
                k: statistics.median(r.cpu_us_per_req[k] for r in rs) for k in rs[0].cpu_us_per_req
            },
        )
        for key, rs in groups.items()
    }


def table(results: list[LevelResult], levels: list[int]) -> str:
    by = medians(results)
    peers = list(dict.fromkeys(r.peer for r in results))
    lines = [
        "| mode | clients | peer | req/s | p50 / p95 (ms) | added p50 (ms) | throughput vs direct "
        "| CPU µs/req: replica, gateway, client |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for c in levels:
            direct = by.get(("direct", mode, c))
            for p in peers:
                r = by.get((p, mode, c))
                if r is None:
                    continue
                added = ratio = "-"
                if direct is not None and p != "direct":
                    added = f"{r.p50_ms - direct.p50_ms:+.2f}"
                    ratio = f"{r.req_per_s / direct.req_per_s:.2f}x"
                errors = f" ({r.errors} errors)" if r.errors else ""
                cpu = ", ".join(
                    f"{r.cpu_us_per_req[k]:.0f}" if k in r.cpu_us_per_req else "-"
                    for k in ("replica", "gateway", "client")
                )
                lines.append(
                    f"| {mode} | {c} | {p} | {r.req_per_s:.0f}{errors} | "
                    f"{r.p50_ms:.2f} / {r.p95_ms:.2f} | {added} | {ratio} | {cpu} |"
                )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", default="direct,modelhost,litellm")
    parser.add_argument("--levels", default="8,64")
    parser.add_argument("--requests", type=int, default=2000, help="per peer, mode and level")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument("--litellm-python", default="/work/litellm-venv/bin/python")
    parser.add_argument("--label", default="", help="a note stored with the results")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    peers = args.peers.split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Server logs are for debugging a run, not results: keep them out of the repository.
    work = Path(tempfile.mkdtemp(prefix=f"bench-gateway-{stamp}-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print("modelhost: starting", file=sys.stderr)
        server, port, replica_port, replica_pid = start_modelhost(work, max(args.levels))
        procs.append(server)
        replica = ("replica", replica_pid)
        targets = []
        if "direct" in peers:
            path = "/v1/chat/completions"
            targets.append(Target("direct", replica_port, path, "-", "admin/bench", (replica,)))
        if "modelhost" in peers:
            path = "/v1/openai/chat/completions"
            pids = (replica, ("gateway", server.pid))
            targets.append(Target("modelhost", port, path, TOKEN, "admin/bench", pids))
        if "litellm" in peers:
            print("litellm: starting", file=sys.stderr)
            proxy, litellm_port = start_litellm(work, args.litellm_python, replica_port)
            procs.append(proxy)
            path = "/v1/chat/completions"
            pids = (replica, ("gateway", proxy.pid))
            targets.append(Target("litellm", litellm_port, path, LITELLM_KEY, "bench", pids))
        results = await run_all(targets, args)
    finally:
        for proc in reversed(procs):
            stop(proc)
    report = {
        "benchmark": "gateway overhead (issue 10)",
        "time": stamp,
        "label": args.label,
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": [asdict(r) for r in results],
        "medians": [asdict(r) for r in medians(results).values()],
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"gateway-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(results, args.levels))
    print(f"results: {out} (server logs: {work})")


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds, so the servers are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    uvloop.run(main())
