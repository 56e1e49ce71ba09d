"""Multi-LoRA in the builtin engine on the packaged SmolLM2-135M with the real example adapters
(examples/adapters/french and upper, trained by scripts/train_adapters.py): learned behaviour,
mixed batches equal to single runs under greedy decoding, LRU under pressure, shared loads,
preloading, unknown adapters."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelhost.engine.builtin.generator import BuiltinGenerator, WeightsSource
from modelhost.engine.builtin.loader import LoadedModel
from modelhost.engine.builtin.options import BuiltinOptions
from modelhost.engine.protocol import (
    ChatMessage,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    UnknownAdapter,
)
from tests.component import test_builtin_engine as builtin_tests

# The session's converted and loaded model, shared with the builtin engine's own tests.
cache_dir = builtin_tests.cache_dir
loaded = builtin_tests.loaded
GGUF = builtin_tests.GGUF

pytestmark = pytest.mark.model
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "adapters"
QUESTION = "What is the capital of Germany?"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("adapters")
    for name in ("french", "upper"):
        (root / name).mkdir()
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(EXAMPLES / name / f, root / name / f)
    yield root


def make(
    loaded: LoadedModel, adapter_dir: Path, max_active: int = 4, preload: tuple[str, ...] = ()
) -> BuiltinGenerator:
    return BuiltinGenerator(
        served_model_name="smollm2",
        max_batch_size=8,
        weights=WeightsSource(local=str(GGUF)),
        # Prompts fit one prefill chunk, so a prompt is computed the same way alone or in a
        # crowd (see the scheduler) and only the LoRA path can make a difference.
        options=BuiltinOptions(context_length=512, max_prefill_tokens=128, seed=1),
        preloaded=loaded,
        adapter_dir=str(adapter_dir),
        max_active_adapters=max_active,
        preload_adapters=preload,
    )


def ask(
    adapter: str | None, question: str = QUESTION, rid: str = "r", n: int = 20
) -> GenerationRequest:
    return GenerationRequest(
        rid,
        SamplingParams(max_tokens=n, temperature=0),
        messages=(ChatMessage("user", question),),
        adapter_id=adapter,
    )


async def tokens(g: BuiltinGenerator, request: GenerationRequest) -> list[TokenEvent]:
    return [e async for e in g.generate(request)]


def text(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


async def test_adapters_answer_in_their_style_and_mixed_batches_equal_single_runs(
    loaded: LoadedModel, adapter_dir: Path
) -> None:
    g = make(loaded, adapter_dir)
    await g.start()
    try:
        alone = {a: await tokens(g, ask(a)) for a in (None, "french", "upper")}
        assert "Berlin" in text(alone[None])
        french = text(alone["french"])
        assert french.startswith("La capitale de l'Allemagne est Berlin"), french
        upper = text(alone["upper"])
        letters = [c for c in upper if c.isalpha()]
        assert "BERLIN" in upper and all(c.isupper() for c in letters), upper
        # Others start first (different adapters and prompts, some sampling), then the three
        # targets join that running batch together.
        others = [
            ask("upper", "Name three fruits.", "o1", 30),
            ask(None, "Write a haiku about rain.", "o2", 30),
            ask("french", "How are you today?", "o3", 30),
        ]
        running = [asyncio.create_task(tokens(g, r)) for r in others]
        await asyncio.sleep(0.2)
        crowd = await asyncio.gather(*(tokens(g, ask(a, rid=f"c{a}")) for a in alone))
        await asyncio.gather(*running)
        for adapter, events in zip(alone, crowd, strict=True):
            assert [e.token_id for e in events] == [e.token_id for e in alone[adapter]], adapter
    finally:
        await g.close()


async def test_lru_under_pressure_waits_instead_of_failing(
    loaded: LoadedModel, adapter_dir: Path
) -> None:
    g = make(loaded, adapter_dir, max_active=1)
    await g.start()
    try:
        requests = [ask(a, rid=f"r{i}", n=8) for i, a in enumerate(["french", "upper"] * 2)]
        results = await asyncio.gather(*(tokens(g, r) for r in requests))
        assert all(events[-1].finish_reason is not None for events in results)
        states = {s.adapter_id: s for s in g.stats().adapters}
        assert sum(s.resident for s in states.values()) == 1
        assert states["french"].loads + states["upper"].loads >= 2
        assert all(s.in_use == 0 for s in states.values())
        assert [e.token_id for e in results[0]] == [e.token_id for e in results[2]]
    finally:
        await g.close()


async def test_concurrent_requests_load_an_adapter_once_and_preload_works(
    loaded: LoadedModel, adapter_dir: Path
) -> None:
    g = make(loaded, adapter_dir, preload=("upper",))
    await g.start()
    try:
        (upper,) = g.stats().adapters
        assert upper.adapter_id == "upper" and upper.resident and upper.loads == 1
        await asyncio.gather(*(tokens(g, ask("french", rid=f"f{i}", n=4)) for i in range(4)))
        await tokens(g, ask("upper", n=4))
        states = {s.adapter_id: s for s in g.stats().adapters}
        assert states["french"].loads == 1 and states["upper"].loads == 1
        load_s = states["french"].load_seconds
        assert load_s is not None and load_s > 0
        assert g.stats().extra["adapters_resident"] == 2
        with pytest.raises(UnknownAdapter):
            g.generate(ask("missing"))
        with pytest.raises(UnknownAdapter):
            g.generate(ask("../french"))
    finally:
        await g.close()
