"""A scripted generator and simulator knobs for the engine server's in-process tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from modelhost.engine.protocol import EngineStats, GenerationRequest, GeneratorError, TokenEvent
from modelhost.engine.simulator_timing import SimulatorKnobs


def knobs(**kw: Any) -> SimulatorKnobs:
    base: dict[str, Any] = {"startup_s": 0, "ttft_ms": 0, "prefill_ms_per_token": 0, "tpot_ms": 0}
    return SimulatorKnobs(**{**base, **kw})


class ScriptedGenerator:
    """A generator whose behaviour a test dictates, for failure paths the simulator never takes."""

    def __init__(self, script: Callable[[GenerationRequest], AsyncIterator[TokenEvent]]) -> None:
        self._script = script
        self.count_fails = False

    model_id = "scripted"
    context_length = 100
    ready = True

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if self.count_fails:
            raise RuntimeError("boom /secret/path")
        return 1

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        return self._script(request)

    def stats(self) -> EngineStats:
        return EngineStats(running=0, waiting=0, max_batch_size=1)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def one_token_then_fail(request: GenerationRequest) -> AsyncIterator[TokenEvent]:
    yield TokenEvent(token_id=1, text="partial")
    raise GeneratorError("the GPU fell over")
