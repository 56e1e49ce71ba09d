"""Token ids to streamed text, one token at a time, with stop strings applied.

Decoding token by token is wrong for byte-level and SentencePiece vocabularies (a character can
span tokens, a leading space depends on the previous token), so each step decodes a short window
of recent ids and emits only what changed, holding back an incomplete character (U+FFFD). Stop
strings are matched on the accumulated text; text that might be the start of a stop string is
held back until it is clearly not one, and a stop string itself is never emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelhost.engine.protocol import held_back_suffix, stop_positions

_CONTEXT_TOKENS = 5  # prompt tokens decoded before the first output token, for spacing


@dataclass(frozen=True)
class TextDelta:
    text: str  # safe to send now
    stopped: bool  # a stop string completed; the sequence ends here


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt: Sequence[int], stops: Sequence[str]) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(prompt[-_CONTEXT_TOKENS:])
        self._prefix = 0  # window start
        self._read = len(self._ids)  # ids before this are already part of `text`
        self._stops = tuple(s for s in stops if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self.text = ""  # all generated text so far
        self._emitted = 0  # characters of `text` already sent

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=True)
        return text

    def add(self, token_id: int) -> TextDelta:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release()

    def _release(self) -> TextDelta:
        if self._stops:
            # A new match can only involve the unsent tail (plus a stop's length of context).
            start = max(0, self._emitted - self._longest_stop)
            found = stop_positions(self.text[start:], self._stops)
            if found is not None:
                end = max(start + found, self._emitted)
                delta = self.text[self._emitted : end]
                self._emitted = len(self.text)
                return TextDelta(delta, stopped=True)
            safe = len(self.text) - held_back_suffix(self.text[start:], self._stops)
        else:
            safe = len(self.text)
        delta = self.text[self._emitted : safe] if safe > self._emitted else ""
        self._emitted = max(self._emitted, safe)
        return TextDelta(delta, stopped=False)

    def flush(self) -> str:
        """At the end of the sequence: whatever was held back that turned out not to be a stop
        string (a partial character is dropped, as there is no more token to complete it)."""
        rest = self.text[self._emitted :]
        self._emitted = len(self.text)
        return rest
