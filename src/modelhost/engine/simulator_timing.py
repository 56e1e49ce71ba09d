"""The simulator's model of an engine: its knobs, its timing and its deterministic text.

Pure code (no asyncio, no clock) so the numbers the simulator produces can be unit-tested
without waiting. `modelhost.engine.simulator` drives this model in real time.

Timing model (like a non-chunked continuous-batching engine such as TGI/LoRAX):
- a *prefill step* admits waiting sequences and produces their first token; it takes
  `ttft_ms + prefill_ms_per_token * (prompt tokens admitted)` and stalls decoding meanwhile;
- a *decode step* gives every running sequence one token and takes
  `tpot_ms * (1 + batch_slowdown * (running - 1))`.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from modelhost.engine.protocol import ChatMessage

# A small fixed vocabulary: enough variety for stop-string tests, cheap to produce.
VOCAB: tuple[str, ...] = (
    " the",
    " a",
    " model",
    " token",
    " engine",
    " batch",
    " request",
    " replica",
    " serves",
    " runs",
    " scales",
    " waits",
    " answers",
    " quickly",
    " slowly",
    " again",
    " GPU",
    " queue",
    " stream",
    " text",
    " of",
    " to",
    " and",
    " in",
    " with",
    " for",
    " every",
    " one",
    " many",
    " small",
    " large",
    " fast",
    " deployment",
    " adapter",
    " weights",
    " cache",
    " prompt",
    " user",
    " system",
    " load",
    " is",
    " was",
    " will",
    " can",
    " each",
    " new",
    " old",
    " first",
    " last",
    " time",
    " step",
    " word",
    " line",
    " data",
    " hello",
    " world",
    ".",
    ",",
    "\n",
    " yes",
    " no",
    " maybe",
    " simulated",
    " output",
)
EOS_TOKEN_ID = len(VOCAB)


class KnobError(ValueError):
    """An engine-specific flag the simulator cannot accept; the message is meant for users."""


@dataclass(frozen=True)
class SimulatorKnobs:
    startup_s: float = 0.2
    ttft_ms: float = 20.0
    prefill_ms_per_token: float = 0.05
    tpot_ms: float = 10.0
    batch_slowdown: float = 0.02
    context_length: int = 4096
    seed: int = 0
    eos_probability: float = 0.0
    fail_start: str | None = None
    crash_after_requests: int | None = None
    adapters: tuple[str, ...] = ()
    adapter_load_ms: float = 30.0


class _RaisingParser(argparse.ArgumentParser):
    # argparse exits the process on bad input; the engine must instead print its fatal line.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise KnobError(f"invalid simulator flags: {message}")


def _nonneg_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def _nonneg_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def parse_knobs(extra: Sequence[str]) -> SimulatorKnobs:
    """Parse the simulator's engine-specific flags; unknown flags are an error, never ignored."""
    p = _RaisingParser(prog="simulator", add_help=False)
    p.add_argument("--startup-s", type=_nonneg_float, default=0.2)
    p.add_argument("--ttft-ms", type=_nonneg_float, default=20.0)
    p.add_argument("--prefill-ms-per-token", type=_nonneg_float, default=0.05)
    p.add_argument("--tpot-ms", type=_nonneg_float, default=10.0)
    p.add_argument("--batch-slowdown", type=_nonneg_float, default=0.02)
    p.add_argument("--context-length", type=_nonneg_int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos-probability", type=_nonneg_float, default=0.0)
    p.add_argument("--fail-start", default=None)
    p.add_argument("--crash-after-requests", type=_nonneg_int, default=None)
    p.add_argument("--adapters", default="", help="comma-separated adapter ids it accepts")
    p.add_argument("--adapter-load-ms", type=_nonneg_float, default=30.0)
    ns = p.parse_args(list(extra))
    if ns.context_length < 2:
        raise KnobError("invalid simulator flags: --context-length must be at least 2")
    if ns.eos_probability > 1:
        raise KnobError("invalid simulator flags: --eos-probability must be within [0, 1]")
    return SimulatorKnobs(
        startup_s=ns.startup_s,
        ttft_ms=ns.ttft_ms,
        prefill_ms_per_token=ns.prefill_ms_per_token,
        tpot_ms=ns.tpot_ms,
        batch_slowdown=ns.batch_slowdown,
        context_length=ns.context_length,
        seed=ns.seed,
        eos_probability=ns.eos_probability,
        fail_start=ns.fail_start,
        crash_after_requests=ns.crash_after_requests,
        adapters=tuple(a for a in (s.strip() for s in ns.adapters.split(",")) if a),
        adapter_load_ms=ns.adapter_load_ms,
    )


def prefill_seconds(knobs: SimulatorKnobs, prompt_tokens: int) -> float:
    """Duration of a prefill step admitting sequences with `prompt_tokens` in total."""
    return (knobs.ttft_ms + knobs.prefill_ms_per_token * prompt_tokens) / 1000.0


def decode_seconds(knobs: SimulatorKnobs, batch_size: int) -> float:
    """Duration of one decode step with `batch_size` running sequences."""
    extra = max(batch_size - 1, 0)
    return knobs.tpot_ms * (1.0 + knobs.batch_slowdown * extra) / 1000.0


def chat_prompt_text(messages: Sequence[ChatMessage]) -> str:
    """The simulator's stand-in for a chat template."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def count_tokens(text: str) -> int:
    """Tokens are whitespace-separated words; every prompt has at least one (a BOS)."""
    return max(len(text.split()), 1)


class TextSource:
    """Deterministic token stream: the same (seed, adapter, request seed, prompt) gives the
    same tokens, so tests and benchmarks are reproducible."""

    __slots__ = ("_rng", "seed")

    def __init__(self, seed: int, prompt: str, adapter_id: str | None, request_seed: int | None):
        material = f"{seed}\x00{adapter_id or ''}\x00{request_seed}\x00{prompt}".encode()
        digest = hashlib.blake2b(material, digest_size=8).digest()
        self.seed = int.from_bytes(digest, "big") >> 1  # fits a signed 64-bit int
        self._rng = random.Random(self.seed)

    def next_token(self) -> tuple[int, str, float]:
        """(token id, text, synthetic logprob)."""
        tid = self._rng.randrange(len(VOCAB))
        return tid, VOCAB[tid], -3.0 * self._rng.random()

    def draw(self) -> float:
        return self._rng.random()
