"""Per-request sampling over a batch of logits.

Every row carries its own parameters and, when it samples, its own torch.Generator seeded from
the request's seed, so a seeded request draws the same numbers whatever else is in the batch:
same seed and prompt, same output. Rows that need no work (no penalties, greedy) cost one argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modelhost.engine.protocol import SamplingParams


@dataclass(eq=False)
class RowSampler:
    """Sampling state of one sequence: parameters, RNG and the token statistics penalties need."""

    params: SamplingParams
    seed: int
    vocab_size: int
    generator: torch.Generator | None = None
    # Counts of generated tokens (presence/frequency penalties, OpenAI semantics).
    output_counts: torch.Tensor | None = None
    # Tokens seen in prompt or output (repetition penalty, HF/CTRL semantics).
    seen: torch.Tensor | None = None
    _prompt: list[int] = field(default_factory=list)

    @classmethod
    def create(
        cls, params: SamplingParams, seed: int, vocab_size: int, prompt: list[int]
    ) -> RowSampler:
        row = cls(params=params, seed=seed, vocab_size=vocab_size)
        if params.temperature > 0:
            row.generator = torch.Generator().manual_seed(seed)
        if params.presence_penalty or params.frequency_penalty:
            row.output_counts = torch.zeros(vocab_size, dtype=torch.float32)
        if params.repetition_penalty != 1.0:
            row.seen = torch.zeros(vocab_size, dtype=torch.bool)
            ids = torch.tensor([t for t in prompt if 0 <= t < vocab_size], dtype=torch.long)
            row.seen[ids] = True
        return row

    @property
    def penalized(self) -> bool:
        return self.output_counts is not None or self.seen is not None

    def observe(self, token: int) -> None:
        if self.output_counts is not None:
            self.output_counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True

    def apply_penalties(self, logits: torch.Tensor) -> None:
        """In place on one row of float32 logits."""
        p = self.params
        if self.seen is not None:
            # CTRL-style: shrink positive logits, push negative ones further down.
            picked = logits[self.seen]
            logits[self.seen] = torch.where(
                picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty
            )
        if self.output_counts is not None:
            counts = self.output_counts
            logits -= counts * p.frequency_penalty + (counts > 0).float() * p.presence_penalty


@dataclass(frozen=True)
class Sampled:
    token: int
    logprob: float


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row: logits with everything outside top-k / the top-p nucleus set to -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, rows: list[RowSampler]) -> list[Sampled]:
    """Pick one token per row of float32 `logits` [len(rows), vocab].

    The reported logprob is the chosen token's log-probability under the model's raw
    distribution (before penalties and temperature), which is what clients compare across
    settings.
    """
    # log p(token) = logit - logsumexp(logits): one pass, no [rows, vocab] log_softmax copy.
    normalizer = torch.logsumexp(logits, dim=-1)
    raw = logits.clone() if any(row.penalized for row in rows) else logits
    for i, row in enumerate(rows):
        if row.penalized:
            row.apply_penalties(logits[i])  # a view: edits the batch in place
    tokens: list[int] = torch.argmax(logits, dim=-1).tolist()
    for i, row in enumerate(rows):
        p = row.params
        if p.temperature > 0 and row.generator is not None:
            scaled = _filter_top_k_top_p(logits[i] / p.temperature, p.top_k, p.top_p)
            probs = torch.softmax(scaled, dim=-1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        row.observe(tokens[i])
    index = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
    chosen: list[float] = (raw.gather(1, index).squeeze(1) - normalizer).tolist()
    return [Sampled(token=t, logprob=lp) for t, lp in zip(tokens, chosen, strict=True)]
