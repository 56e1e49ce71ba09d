"""Per-request sampling of the builtin engine."""

from __future__ import annotations

import math

import torch

from modelhost.engine.builtin.sampling import RowSampler, sample
from modelhost.engine.protocol import SamplingParams

V = 50


def logits_batch(rows: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(rows, V, generator=gen) * 3


def draw(params: SamplingParams, seed: int, steps: int, logits: torch.Tensor) -> list[int]:
    row = RowSampler.create(params, seed, V, prompt=[1, 2])
    return [sample(logits.clone(), [row])[0].token for _ in range(steps)]


def test_greedy_is_argmax_and_reports_raw_logprob() -> None:
    logits = logits_batch(3)
    rows = [RowSampler.create(SamplingParams(temperature=0), 0, V, []) for _ in range(3)]
    picks = sample(logits.clone(), rows)
    assert [p.token for p in picks] == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1)[0, picks[0].token].item()
    assert math.isclose(picks[0].logprob, expected, rel_tol=1e-6)


def test_same_seed_same_tokens_and_independent_of_the_batch() -> None:
    logits = logits_batch(1)
    params = SamplingParams(temperature=1.0)
    alone = draw(params, seed=42, steps=20, logits=logits)
    assert alone == draw(params, seed=42, steps=20, logits=logits)
    assert alone != draw(params, seed=43, steps=20, logits=logits)
    # The same row sampled beside other sampling rows draws the same numbers.
    mine = RowSampler.create(params, 42, V, [])
    others = [RowSampler.create(params, s, V, []) for s in (1, 2)]
    batch = torch.cat([logits_batch(2), logits])
    together = [sample(batch.clone(), [*others, mine])[2].token for _ in range(20)]
    assert together == alone


def test_top_k_one_is_greedy() -> None:
    logits = logits_batch(1)
    tokens = draw(SamplingParams(temperature=5.0, top_k=1), 3, 10, logits)
    assert set(tokens) == {int(logits.argmax())}


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.full((1, V), -10.0)
    logits[0, 3], logits[0, 4] = 5.0, 4.0  # ~73% / 27% of the mass, the rest ~0
    tokens = draw(SamplingParams(temperature=1.0, top_p=0.5), 1, 30, logits)
    assert set(tokens) == {3}
    tokens = draw(SamplingParams(temperature=1.0, top_p=0.99), 1, 60, logits)
    assert set(tokens) == {3, 4}


def test_frequency_and_presence_penalties_push_away_from_repeats() -> None:
    logits = torch.zeros(1, V)
    logits[0, 7] = 1.0
    params = SamplingParams(temperature=0, frequency_penalty=0.6)
    # Greedy picks 7, then its count makes it lose to the zeros (1 - 0.6*2 < 0).
    assert draw(params, 0, 3, logits)[:3] == [7, 7, 0]
    params = SamplingParams(temperature=0, presence_penalty=2.0)
    assert draw(params, 0, 2, logits) == [7, 0]


def test_repetition_penalty_counts_the_prompt() -> None:
    logits = torch.zeros(1, V)
    logits[0, 1] = 1.0  # token 1 is in the prompt
    logits[0, 9] = 0.6
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert draw(params, 0, 1, logits) == [9]
    assert draw(SamplingParams(temperature=0), 0, 1, logits) == [1]
