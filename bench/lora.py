"""Multi-LoRA serving (issue 5): many adapters in one batch vs the base model vs peft.

Same base model (the packaged SmolLM2-135M-Instruct), same prompts, same output lengths
(greedy, EOS suppressed so every request yields exactly --max-tokens tokens), in one run:

- base:     the builtin engine, no adapter, C requests in flight;
- lora-N:   the builtin engine, the same C requests spread round-robin over N distinct adapters
            (N = 1, 8, 32, 128), all in flight at once (C = max(N, --concurrency));
- peft-N:   what a user does without modelhost: transformers + peft with every adapter loaded,
            requests grouped by adapter, `set_adapter` per group, each group's requests batched
            through one `generate()` call, groups one after another.

Adapters are random rank-16 LoRAs (fp16 files, peft's format) on --modules (default: all seven
projections of the Llama block), small enough that text stays sane. The engine is driven
in-process (no HTTP), like `bench/engine.py --ours direct`. Reported: output tokens/s, p95 time
to first token, and adapter load times: cold (from disk to usable in the batch, on an idle
engine and during the N-adapter burst) and warm (already resident: no load at all).
Results go to bench/results/lora-<time>.json and a markdown table to stdout.

    .venv/bin/python bench/lora.py                           # everything, ~10 min on 2 cores
    .venv/bin/python bench/lora.py --adapters 32 --no-peft   # one level, engine only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

# The same prompts as the engine benchmark (bench/ is on sys.path when run as a script).
from engine_peers import TOPICS  # noqa: E402
from modelhost.config.catalog import packaged_model_path  # noqa: E402
from modelhost.engine.builtin.generator import BuiltinGenerator, WeightsSource  # noqa: E402
from modelhost.engine.builtin.loader import LoadedModel, load  # noqa: E402
from modelhost.engine.builtin.options import BuiltinOptions  # noqa: E402
from modelhost.engine.protocol import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402

SHAPES = {  # SmolLM2-135M: (in, out) of each projection
    "q_proj": (576, 576),
    "k_proj": (576, 192),
    "v_proj": (576, 192),
    "o_proj": (576, 576),
    "gate_proj": (576, 1536),
    "up_proj": (576, 1536),
    "down_proj": (1536, 576),
}
MODULE_SETS = {"all": tuple(SHAPES), "qv": ("q_proj", "v_proj")}


@dataclass
class Run:
    name: str
    adapters: int
    requests: int
    rates: list[float] = field(default_factory=list)  # output tokens/s of each round
    cpu_rates: list[float] = field(default_factory=list)  # tokens per CPU-second (this process)
    ttft_s: list[float] = field(default_factory=list)  # every request of every round
    loads_s: list[float] = field(default_factory=list)  # each adapter's load in the cold burst
    burst_s: float = 0.0  # the cold burst: first requests for N adapters at once, end to end

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.rates)

    @property
    def p95_ttft_s(self) -> float:
        return percentile(self.ttft_s, 95)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def write_adapters(root: Path, count: int, modules: tuple[str, ...], rank: int) -> list[str]:
    """Random peft-format LoRAs. A ~ N(0, 1/in), B ~ N(0, (0.02/sqrt(r))^2), alpha = 2r: the
    delta is a few percent of the base projection, enough to change text, not to wreck it."""
    from safetensors.torch import save_file

    names = []
    for i in range(count):
        g = torch.Generator().manual_seed(1000 + i)
        folder = root / f"bench{i:04d}"
        folder.mkdir(parents=True)
        config = {
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": 2 * rank,
            "target_modules": list(modules),
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        }
        (folder / "adapter_config.json").write_text(json.dumps(config))
        tensors = {}
        for layer in range(30):
            for m in modules:
                fan_in, fan_out = SHAPES[m]
                kind = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                p = f"base_model.model.model.layers.{layer}.{kind}.{m}"
                a = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
                b = torch.randn(fan_out, rank, generator=g) * 0.02 / rank**0.5
                tensors[f"{p}.lora_A.weight"] = a.half()
                tensors[f"{p}.lora_B.weight"] = b.half()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        names.append(folder.name)
    return names


def prompts(n: int) -> list[str]:
    return [f"Write a short explanation of {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def engine(loaded: LoadedModel, batch: int, adapter_dir: Path, max_active: int) -> BuiltinGenerator:
    return BuiltinGenerator(
        served_model_name="smollm2",
        max_batch_size=batch,
        weights=WeightsSource(local=str(packaged_model_path())),
        options=BuiltinOptions(context_length=512, seed=1),
        preloaded=loaded,
        adapter_dir=str(adapter_dir),
        max_active_adapters=max_active,
    )


async def drive(
    g: BuiltinGenerator, texts: list[str], adapters: list[str | None], max_tokens: int
) -> tuple[int, float, list[float]]:
    """All requests at once; returns (tokens, seconds, TTFTs). The process's CPU seconds go to
    LAST_CPU_S: on a machine shared with other work, tokens per CPU-second compares two
    configurations more steadily than wall-clock rates do."""
    ttft: list[float] = []
    started = time.perf_counter()
    cpu_started = time.process_time()

    async def one(i: int) -> int:
        request = GenerationRequest(
            f"r{i}",
            SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
            messages=(ChatMessage("user", texts[i]),),
            adapter_id=adapters[i],
        )
        count = 0
        async for _ in g.generate(request):
            if count == 0:
                ttft.append(time.perf_counter() - started)
            count += 1
        return count

    counts = await asyncio.gather(*(one(i) for i in range(len(texts))))
    LAST_CPU_S[0] = time.process_time() - cpu_started
    return sum(counts), time.perf_counter() - started, ttft


LAST_CPU_S = [0.0]  # CPU seconds of the last drive()


async def engine_runs(
    loaded: LoadedModel, root: Path, names: list[str], levels: list[int], args: argparse.Namespace
) -> tuple[list[Run], dict[str, Any]]:
    """Per level: one engine; a cold burst loads the N adapters; then rounds that alternate a
    base-only run and an N-adapter run of the same requests, so both see the same machine
    (other processes share these cores) and the ratio is taken round by round."""
    runs: list[Run] = []
    for n in levels:
        c = max(n, args.concurrency)
        g = engine(loaded, c, root, n)
        await g.start()
        await drive(g, prompts(2), [None, None], 2)  # warm the kernels
        burst_started = time.perf_counter()
        await drive(g, prompts(n), list(names[:n]), 1)
        burst = time.perf_counter() - burst_started
        base = Run(f"base (C={c})", 0, c)
        lora = Run(f"lora-{n} (C={c})", n, c, burst_s=burst)
        lora.loads_s = [s.load_seconds for s in g.stats().adapters if s.load_seconds is not None]
        assigned: list[str | None] = [names[i % n] for i in range(c)]
        for _ in range(args.rounds):
            for run, adapters in ((base, [None] * c), (lora, assigned)):
                tokens, seconds, ttft = await drive(g, prompts(c), adapters, args.max_tokens)
                run.rates.append(tokens / seconds)
                run.cpu_rates.append(tokens / LAST_CPU_S[0])
                run.ttft_s.extend(ttft)
        await g.close()
        ratios = [x / y for x, y in zip(lora.rates, base.rates, strict=True)]
        cpu_ratios = [x / y for x, y in zip(lora.cpu_rates, base.cpu_rates, strict=True)]
        print(
            f"  N={n}: base {base.tokens_per_s:.1f} tok/s, lora {lora.tokens_per_s:.1f} tok/s, "
            f"ratio per round {', '.join(f'{r:.2f}' for r in ratios)}; per CPU-second "
            f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}",
            file=sys.stderr,
        )
        runs += [base, lora]
    # Load times on an idle engine: cold (first request for the adapter) vs warm (resident).
    g = engine(loaded, 4, root, 64)
    await g.start()
    await drive(g, prompts(1), [None], 2)
    cold, ttft_cold, ttft_warm, ttft_base = [], [], [], []
    for name in names[: args.load_samples]:
        _, _, t = await drive(g, prompts(1), [name], 1)
        ttft_cold.append(t[0])
        state = next(s for s in g.stats().adapters if s.adapter_id == name)
        cold.append(state.load_seconds or 0.0)
        _, _, t = await drive(g, prompts(1), [name], 1)
        ttft_warm.append(t[0])
        _, _, t = await drive(g, prompts(1), [None], 1)
        ttft_base.append(t[0])
    await g.close()
    loads = {
        "cold_load_s_median": statistics.median(cold),
        "cold_load_s_max": max(cold),
        "ttft_cold_s_median": statistics.median(ttft_cold),
        "ttft_warm_s_median": statistics.median(ttft_warm),
        "ttft_base_s_median": statistics.median(ttft_base),
        "samples": len(cold),
    }
    return runs, loads


def peft_runs(
    folder: Path, root: Path, names: list[str], levels: list[int], args: argparse.Namespace
) -> list[Run]:
    """transformers + peft, one active adapter at a time, each adapter's requests batched."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    dtype = torch.bfloat16 if loaded_dtype_is_bf16() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model = PeftModel.from_pretrained(base, str(root / names[0]), adapter_name=names[0])
    loaded_names = {names[0]}
    model.eval()
    runs = []

    class FirstToken(LogitsProcessor):
        def __init__(self) -> None:
            self.at: float | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.at is None:
                self.at = time.perf_counter()
            return scores

    for n in levels:
        if n > args.peft_max_adapters:
            continue
        for name in names[:n]:
            if name not in loaded_names:
                model.load_adapter(str(root / name), adapter_name=name)
                loaded_names.add(name)
        c = max(n, args.concurrency)
        texts = prompts(c)
        groups: dict[str, list[int]] = {}
        for i in range(c):
            groups.setdefault(names[i % n], []).append(i)
        ttft: list[float] = []
        tokens = 0
        started = time.perf_counter()
        for name, members in groups.items():
            model.set_adapter(name)
            chats = [
                tok.apply_chat_template(
                    [{"role": "user", "content": texts[i]}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for i in members
            ]
            batch = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
            first = FirstToken()
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=args.max_tokens,
                    min_new_tokens=args.max_tokens,
                    do_sample=False,
                    logits_processor=[first],
                    pad_token_id=tok.pad_token_id,
                )
            tokens += (out.shape[1] - batch["input_ids"].shape[1]) * len(members)
            ttft.extend([(first.at or time.perf_counter()) - started] * len(members))
        rate = tokens / (time.perf_counter() - started)
        runs.append(Run(f"peft-{n} (C={c})", n, c, rates=[rate], ttft_s=ttft))
        print(f"  {runs[-1].name}: {runs[-1].tokens_per_s:.1f} tok/s", file=sys.stderr)
    return runs


def loaded_dtype_is_bf16() -> bool:
    from modelhost.engine.builtin.loader import pick_dtype

    return pick_dtype("auto", "cpu").name == "bfloat16"


def table(runs: list[Run]) -> str:
    lines = [
        "| run | adapters | requests | tokens/s | vs base | vs base (CPU-s) | vs peft "
        "| p95 TTFT s | cold burst: load p50/max s, all ready s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    peft = {r.adapters: r for r in runs if r.name.startswith("peft")}
    base: Run | None = None
    for r in runs:
        if r.adapters == 0:
            base = r
        vs_base = vs_base_cpu = float("nan")
        if r.name.startswith("lora") and base is not None:
            vs_base = statistics.median(x / y for x, y in zip(r.rates, base.rates, strict=True))
            vs_base_cpu = statistics.median(
                x / y for x, y in zip(r.cpu_rates, base.cpu_rates, strict=True)
            )
        p = peft.get(r.adapters)
        vs_peft = (
            r.tokens_per_s / p.tokens_per_s if p and r.name.startswith("lora") else float("nan")
        )
        burst = (
            f"{statistics.median(r.loads_s):.2f} / {max(r.loads_s):.2f}, {r.burst_s:.2f}"
            if r.loads_s
            else "-"
        )
        lines.append(
            f"| {r.name} | {r.adapters} | {r.requests} | {r.tokens_per_s:.1f} | "
            f"{vs_base:.2f} | {vs_base_cpu:.2f} | {vs_peft:.2f} | {r.p95_ttft_s:.2f} | {burst} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", default="1,8,32,128", help="N levels")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (min)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--modules", choices=sorted(MODULE_SETS), default="all")
    parser.add_argument("--load-samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="base/LoRA alternations per level")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument(
        "--peft-max-adapters",
        type=int,
        default=32,
        help="peft levels above this are skipped (too slow)",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.adapters.split(",")]
    gguf = packaged_model_path()
    if gguf is None:
        sys.exit("the packaged model is not installed")
    loaded = load(
        local=str(gguf),
        hf_repo=None,
        hf_revision=None,
        device="cpu",
        options=BuiltinOptions(context_length=512),
        max_batch_size=max([*levels, args.concurrency]),
    )
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        names = write_adapters(
            root, max([*levels, args.load_samples]), MODULE_SETS[args.modules], args.rank
        )
        print(f"wrote {len(names)} adapters in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        runs, loads = asyncio.run(engine_runs(loaded, root, names, levels, args))
        for r in runs:
            print(
                f"  {r.name}: {r.tokens_per_s:.1f} tok/s, p95 TTFT {r.p95_ttft_s:.2f}s",
                file=sys.stderr,
            )
        if not args.no_peft:
            runs += peft_runs(loaded.folder, root, names, levels, args)
    print(table(runs))
    print(json.dumps(loads, indent=2))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"lora-{args.modules}-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "cpu_threads": torch.get_num_threads(),
                "load_average": os.getloadavg(),
                "runs": [
                    {**asdict(r), "tokens_per_s": r.tokens_per_s, "p95_ttft_s": r.p95_ttft_s}
                    for r in runs
                ],
                "loads": loads,
            },
            indent=2,
        )
    )
    print(f"results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
