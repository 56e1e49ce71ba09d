"""The contract between an engine's HTTP layer and the thing that generates tokens.

Every engine process (the `builtin` PyTorch engine and the `simulator`) serves the same HTTP
surface (OpenAI chat/completions/models, LoRAX /generate and /generate_stream, /health, /info,
/metrics) from `modelhost.engine.server`. The server turns requests into `GenerationRequest`s
and hands them to a `Generator`; the generator yields `TokenEvent`s. Keeping this seam narrow
lets the simulator and the real engine share every byte of protocol handling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["length", "eos_token", "stop_sequence", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate. Exactly one of `prompt` / `messages` is set.

    `messages` asks the generator to apply the model's chat template.
    `adapter_id` None means the base model (multi-LoRA builds on this field).
    """

    request_id: str
    params: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    adapter_id: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `text` is the decoded text this token adds (may be "" while a
    multi-byte character or a possible stop string is held back). The last event of a
    sequence has `finish_reason` set and carries the final counts.
    """

    token_id: int
    text: str
    logprob: float | None = None
    special: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class AdapterState:
    """One LoRA adapter an engine has loaded at least once (for /v1/adapters and metrics)."""

    adapter_id: str
    resident: bool
    in_use: int  # sequences using it now (queued or running)
    loads: int  # times it was loaded (again after each eviction)
    load_seconds: float | None  # the last load, from disk to usable in the batch
    load_seconds_total: float = 0.0


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    max_batch_size: int
    extra: dict[str, float] = field(default_factory=dict)
    adapters: tuple[AdapterState, ...] = ()  # multi-LoRA engines: every adapter seen
    # What the engine runs on: device, dtype and why (dtype_reason); strings, for /stats.
    runtime: dict[str, str] = field(default_factory=dict)


class GeneratorError(Exception):
    """Base for errors a generator reports to the HTTP layer."""


class ContextLengthExceeded(GeneratorError):
    """The prompt, or prompt + max_tokens, does not fit the model's context."""

    def __init__(self, message: str, param: Literal["messages", "prompt", "max_tokens"]) -> None:
        super().__init__(message)
        self.param = param


class UnknownAdapter(GeneratorError):
    """The request names an adapter this engine cannot load."""


class Generator(Protocol):
    """What the HTTP layer needs from an engine core."""

    @property
    def model_id(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Tokens the prompt (after chat templating) occupies; used for validation."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of one sequence. Closing the iterator early (client gone)
        cancels the sequence and frees its resources at once. Raises GeneratorError
        subclasses for invalid requests before yielding anything."""
        ...

    def stats(self) -> EngineStats: ...

    async def start(self) -> None:
        """Load weights / warm up. The server reports /health 503 until this returns."""
        ...

    async def close(self) -> None: ...


def stop_positions(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest complete stop string in `text`, or None."""
    found = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(found) if found else None


def held_back_suffix(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string and so must
    not be emitted yet."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold
