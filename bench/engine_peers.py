"""The peers of bench/engine.py: how each is started, warmed up and sent a request.

Each peer becomes a `Client`: an async function (prompt, max_tokens) -> Sample that streams one
greedy completion of exactly max_tokens tokens and times its first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelhost_server import (
    ROOT,
    auth_headers,
    deploy_and_wait,
    free_port,
    serve_command,
    serve_env,
)

sys.path.insert(0, str(ROOT / "src"))

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
class PeerInfo:
    name: str
    startup_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


Client = Callable[[str, int], Awaitable[Sample]]


def http_client(
    base: str, extra: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[Client, httpx.AsyncClient]:
    http = httpx.AsyncClient(
        base_url=base,
        timeout=httpx.Timeout(600.0),
        limits=httpx.Limits(max_connections=256),
        headers=headers,
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
    if peer.startswith("ours") and (args.ours == "http" or peer != "ours"):
        # "ours@float32": the builtin engine with --dtype forced (always over HTTP).
        dtype = peer.partition("@")[2]
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
            *(["--dtype", dtype] if dtype else []),
        ]
        log = logs / f"{peer}.log"
        proc, info.startup_s = start_process(cmd, env, f"http://127.0.0.1:{port}/health", log)
        info.notes["load_timings"] = parse_ready_line(log)
        info.notes["runtime"] = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
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
            *(["--extra-bufts"] if args.llama_extra_bufts else []),
        ]
        proc, info.startup_s = start_process(
            cmd, env, f"http://127.0.0.1:{port}/v1/models", logs / "llamacpp.log"
        )
        client, http = http_client(
            f"http://127.0.0.1:{port}", {"logit_bias": {str(EOS_TOKEN_ID): -100.0}}
        )
        running = RunningPeer(info, client, proc=proc, http=http)
    elif peer == "vllm":
        # vLLM's CPU build serves the same weights: the folder the builtin engine converts the
        # GGUF file into (safetensors), since vLLM's own GGUF loader needs a hub tokenizer.
        from modelhost.engine.builtin.weights import gguf_to_folder

        folder = gguf_to_folder(gguf, Path.home() / ".cache" / "modelhost", print)
        port = free_port()
        cmd = [
            args.vllm_python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(folder),
            "--served-model-name",
            "bench",
            "--max-model-len",
            "2048",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args.vllm_args.split(),
            *args.vllm_direct_args.split(),
        ]
        venv_lib = Path(args.vllm_python).resolve().parent.parent / "lib"
        vllm_env = {
            **env,
            "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB; far more than 64 x 2048 tokens need
            "OMP_NUM_THREADS": str(args.threads),
        }
        if args.vllm_preload:
            # vLLM's CPU guide: Intel OpenMP (shipped in its venv) and tcmalloc, preloaded.
            libs = [str(venv_lib / "libiomp5.so"), *args.vllm_preload.split(":")]
            vllm_env["LD_PRELOAD"] = ":".join(p for p in libs if Path(p).exists())
        vllm_env.pop("PYTHONPATH", None)
        proc, info.startup_s = start_process(
            cmd, vllm_env, f"http://127.0.0.1:{port}/v1/models", logs / "vllm.log"
        )
        info.notes["ld_preload"] = vllm_env.get("LD_PRELOAD", "")
        client, http = http_client(
            f"http://127.0.0.1:{port}",
            {"model": "bench", "ignore_eos": True, "stream_options": {"include_usage": True}},
        )
        running = RunningPeer(info, client, proc=proc, http=http)
    elif peer == "modelhost-vllm":
        # A real `modelhost serve` whose deployment runs on the vllm runtime (the same vLLM
        # interpreter as the vllm peer), called through the gateway: what modelhost adds.
        port = free_port()
        token = "mh_bench_engine_admin_token_0123456789"
        data_dir = Path(tempfile.mkdtemp(prefix="mh-bench-vllm-"))
        serve = serve_env(token, MODELHOST_VLLM_PYTHON=args.vllm_python)
        cmd = serve_command(port, data_dir, "--cpu-slots", "1")
        base = f"http://127.0.0.1:{port}"
        proc, _ = start_process(cmd, serve, f"{base}/readyz", logs / "modelhost-vllm.log")
        started = time.perf_counter()
        body = {
            "model_name": "bench",
            "gpu": "CPU",
            "base_model": "smollm2-135m-instruct",
            "engine": "vllm",
            "max_batch_size": max(max_level, 1),
            "engine_args": ["--context-length", "2048", *args.vllm_args.split()],
        }
        deploy_and_wait(base, token, body, timeout_s=900, poll_s=1, label="modelhost-vllm")
        info.startup_s = time.perf_counter() - started
        client, http = http_client(
            base,
            {"model": "admin/bench", "ignore_eos": True, "stream_options": {"include_usage": True}},
            headers=auth_headers(token),
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
