"""The simulator engine: knobs, timing model, deterministic text, stop strings, batching."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from modelhost.engine.args import parse
from modelhost.engine.protocol import (
    ChatMessage,
    ContextLengthExceeded,
    GenerationRequest,
    GeneratorError,
    SamplingParams,
    TokenEvent,
    UnknownAdapter,
)
from modelhost.engine.server import StartupError
from modelhost.engine.simulator import SimulatorGenerator, build_generator
from modelhost.engine.simulator_timing import (
    EOS_TOKEN_ID,
    VOCAB,
    KnobError,
    SimulatorKnobs,
    TextSource,
    chat_prompt_text,
    count_tokens,
    decode_seconds,
    parse_knobs,
    prefill_seconds,
)

FAST = SimulatorKnobs(startup_s=0, ttft_ms=0, prefill_ms_per_token=0, tpot_ms=0)


def req(
    prompt: str = "tell me a story",
    *,
    max_tokens: int = 8,
    stop: tuple[str, ...] = (),
    rid: str = "r1",
    adapter: str | None = None,
    **kw: object,
) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, stop=stop, **kw)  # type: ignore[arg-type]
    return GenerationRequest(request_id=rid, params=params, prompt=prompt, adapter_id=adapter)


async def started(knobs: SimulatorKnobs = FAST, batch: int = 4) -> SimulatorGenerator:
    gen = SimulatorGenerator(knobs, model_id="sim", max_batch_size=batch)
    await gen.start()
    return gen


async def collect(it: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    return [ev async for ev in it]


def text_of(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


# --- knobs and timing ---------------------------------------------------------------------


def test_knob_defaults_match_documentation() -> None:
    k = parse_knobs([])
    assert (k.startup_s, k.ttft_ms, k.prefill_ms_per_token, k.tpot_ms) == (0.2, 20.0, 0.05, 10.0)
    assert (k.batch_slowdown, k.context_length, k.seed, k.eos_probability) == (0.02, 4096, 0, 0)
    assert k.fail_start is None and k.crash_after_requests is None and k.adapters == ()


def test_knobs_parse_every_flag() -> None:
    flags = (
        "--startup-s 1.5 --ttft-ms 3 --prefill-ms-per-token 0.5 --tpot-ms 7 --batch-slowdown 0.1 "
        "--context-length 128 --seed 9 --eos-probability 0.25 --crash-after-requests 3 "
        "--adapters a/1,b"
    )
    k = parse_knobs([*flags.split(" "), "--fail-start", "weights are missing"])
    assert k == SimulatorKnobs(
        1.5, 3, 0.5, 7, 0.1, 128, 9, 0.25, "weights are missing", 3, ("a/1", "b")
    )


@pytest.mark.parametrize(
    "argv",
    [["--no-such-flag"], ["--tpot-ms", "-1"], ["--tpot-ms", "fast"], ["--eos-probability", "2"]],
)
def test_bad_knobs_are_errors_not_ignored(argv: list[str]) -> None:
    with pytest.raises(KnobError):
        parse_knobs(argv)


def test_build_generator_turns_bad_knobs_into_a_startup_error() -> None:
    args = parse(["--engine", "simulator", "--port", "1", "--served-model-name", "m", "--bogus"])
    with pytest.raises(StartupError, match="bogus"):
        build_generator(args)
    args = parse(
        ["--engine", "simulator", "--port", "1", "--served-model-name", "m", "--seed", "4"]
    )
    gen = build_generator(args)
    assert gen.knobs.seed == 4 and gen.model_id == "m"


def test_timing_model() -> None:
    k = SimulatorKnobs(ttft_ms=20, prefill_ms_per_token=0.5, tpot_ms=10, batch_slowdown=0.1)
    assert prefill_seconds(k, 100) == pytest.approx(0.070)
    assert decode_seconds(k, 1) == pytest.approx(0.010)
    assert decode_seconds(k, 11) == pytest.approx(0.020)  # 10 extra sequences, +10% each
    assert decode_seconds(k, 0) == pytest.approx(0.010)


def test_token_counting_and_chat_prompt() -> None:
    assert count_tokens("one two  three\nfour") == 4
    assert count_tokens("") == 1
    text = chat_prompt_text([ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert text == "system: be brief\nuser: hi\nassistant:"


def test_text_source_is_deterministic_and_keyed() -> None:
    def tokens(src: TextSource) -> list[int]:
        return [src.next_token()[0] for _ in range(20)]

    a = tokens(TextSource(0, "p", None, None))
    assert a == tokens(TextSource(0, "p", None, None))
    assert a != tokens(TextSource(1, "p", None, None))
    assert a != tokens(TextSource(0, "q", None, None))
    assert a != tokens(TextSource(0, "p", "adapter", None))
    assert a != tokens(TextSource(0, "p", None, 7))
    assert all(0 <= t < len(VOCAB) for t in a)


# --- generation ---------------------------------------------------------------------------


async def test_same_request_same_text_and_max_tokens_honoured() -> None:
    gen = await started()
    try:
        first = await collect(gen.generate(req(max_tokens=12)))
        again = await collect(gen.generate(req(max_tokens=12, rid="r2")))
        other = await collect(gen.generate(req("another prompt", max_tokens=12)))
    finally:
        await gen.close()
    assert len(first) == 12 and text_of(first) == text_of(again) != text_of(other)
    last = first[-1]
    assert last.finish_reason == "length" and last.generated_tokens == 12
    assert last.prompt_tokens == 4
    assert all(e.finish_reason is None for e in first[:-1])
    assert all(e.logprob is not None and e.logprob <= 0 for e in first)


async def test_stop_string_ends_generation_and_is_not_emitted() -> None:
    gen = await started()
    try:
        full = text_of(await collect(gen.generate(req(max_tokens=40))))
        # A stop string spanning two tokens, taken from the middle of the free-running text.
        words = full.split(" ")
        stop = " " + words[5] + " " + words[6][:2]
        assert stop in full
        events = await collect(gen.generate(req(max_tokens=40, stop=("zzz-never", stop))))
    finally:
        await gen.close()
    out = text_of(events)
    assert out == full[: full.index(stop)]
    assert stop not in out
    assert events[-1].finish_reason == "stop_sequence"
    assert events[-1].generated_tokens == len(events) < 40


async def test_eos_knob_and_ignore_eos() -> None:
    gen = await started(SimulatorKnobs(startup_s=0, ttft_ms=0, tpot_ms=0, eos_probability=1.0))
    try:
        events = await collect(gen.generate(req(max_tokens=5)))
        ignored = await collect(gen.generate(req(max_tokens=5, ignore_eos=True)))
    finally:
        await gen.close()
    assert len(events) == 1
    assert events[0].finish_reason == "eos_token" and events[0].special
    assert events[0].token_id == EOS_TOKEN_ID and events[0].text == ""
    assert ignored[-1].finish_reason == "length" and len(ignored) == 5


async def test_context_length_is_checked_before_anything_runs() -> None:
    gen = await started(SimulatorKnobs(startup_s=0, ttft_ms=0, tpot_ms=0, context_length=10))
    try:
        with pytest.raises(ContextLengthExceeded) as too_long:
            gen.generate(req(" ".join(["w"] * 10)))
        assert too_long.value.param == "prompt"
        with pytest.raises(ContextLengthExceeded) as chat:
            gen.generate(
                GenerationRequest(
                    "c", SamplingParams(max_tokens=1), messages=(ChatMessage("user", "a " * 9),)
                )
            )
        assert chat.value.param == "messages"
        with pytest.raises(ContextLengthExceeded) as room:
            gen.generate(req("one two three", max_tokens=8))
        assert room.value.param == "max_tokens"
        ok = await collect(gen.generate(req("one two three", max_tokens=7)))
        assert ok[-1].generated_tokens == 7
        assert gen.stats().extra["requests"] == 1  # rejected requests are not counted
    finally:
        await gen.close()


async def test_adapters() -> None:
    gen = await started(SimulatorKnobs(startup_s=0, ttft_ms=0, tpot_ms=0, adapters=("ad/1",)))
    try:
        with pytest.raises(UnknownAdapter):
            gen.generate(req(adapter="nope"))
        base = text_of(await collect(gen.generate(req(max_tokens=10))))
        tuned = text_of(await collect(gen.generate(req(max_tokens=10, adapter="ad/1"))))
    finally:
        await gen.close()
    assert base != tuned


async def test_batch_limit_queue_order_and_cancellation_free_slots() -> None:
    # Slow decode so sequences stay put while we look; the first (prefill) step is instant.
    knobs = SimulatorKnobs(startup_s=0, ttft_ms=0, prefill_ms_per_token=0, tpot_ms=60_000)
    gen = await started(knobs, batch=2)
    its = [gen.generate(req(f"prompt {i}", rid=f"r{i}", max_tokens=100)) for i in range(5)]
    firsts = [asyncio.ensure_future(anext(it)) for it in its]
    try:
        done, _ = await asyncio.wait(firsts, return_when=asyncio.FIRST_COMPLETED)
        while len(done) < 2:
            await asyncio.sleep(0)
            done = {f for f in firsts if f.done()}
        assert {firsts.index(f) for f in done} == {0, 1}  # arrival order
        s = gen.stats()
        assert (s.running, s.waiting, s.max_batch_size) == (2, 3, 2)
        # Closing a running sequence's iterator frees its slot at once (the next in line is
        # admitted when the current step ends).
        await its[0].aclose()  # type: ignore[attr-defined]
        assert (gen.stats().running, gen.stats().waiting) == (1, 3)
        # A waiting sequence whose consumer is cancelled leaves the queue at once.
        firsts[4].cancel()
        await asyncio.gather(firsts[4], return_exceptions=True)
        assert (gen.stats().running, gen.stats().waiting) == (1, 2)
    finally:
        for f in firsts:
            f.cancel()
        await asyncio.gather(*firsts, return_exceptions=True)
        for it in its:
            await it.aclose()  # type: ignore[attr-defined]
        assert (gen.stats().running, gen.stats().waiting) == (0, 0)
        await gen.close()


async def test_close_fails_open_sequences() -> None:
    gen = await started(SimulatorKnobs(startup_s=0, ttft_ms=0, tpot_ms=60_000), batch=1)
    a = gen.generate(req(rid="a", max_tokens=50))
    b = gen.generate(req(rid="b", max_tokens=50))
    await anext(a)
    pending_b = asyncio.ensure_future(anext(b))
    await asyncio.sleep(0)
    await gen.close()
    with pytest.raises(GeneratorError):
        await anext(a)
    with pytest.raises(GeneratorError):
        await pending_b
    assert not gen.ready
    with pytest.raises(GeneratorError):
        gen.generate(req())


async def test_not_started_and_fail_start() -> None:
    gen = SimulatorGenerator(FAST, model_id="sim", max_batch_size=1)
    assert not gen.ready
    with pytest.raises(GeneratorError):
        gen.generate(req())
    bad = SimulatorGenerator(
        SimulatorKnobs(startup_s=0, fail_start="weights not found at /x"),
        model_id="sim",
        max_batch_size=1,
    )
    with pytest.raises(StartupError, match="weights not found at /x"):
        await bad.start()
    assert not bad.ready


async def test_crash_after_requests_exits_hard(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    gen = await started(SimulatorKnobs(startup_s=0, ttft_ms=0, tpot_ms=0, crash_after_requests=2))
    try:
        await collect(gen.generate(req(rid="1")))
        await collect(gen.generate(req(rid="2")))
        assert codes == []
        with pytest.raises(SystemExit):
            gen.generate(req(rid="3"))
        assert codes == [70]
    finally:
        await gen.close()
