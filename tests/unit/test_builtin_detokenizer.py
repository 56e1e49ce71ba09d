"""Streaming detokenization and stop strings of the builtin engine."""

from __future__ import annotations

from collections.abc import Sequence

from modelhost.engine.builtin.detokenizer import IncrementalDetokenizer


class ByteTokenizer:
    """Token i is byte i, so multi-byte characters span tokens like in byte-level BPE."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def run(text: str, stops: Sequence[str] = ()) -> tuple[list[str], bool, str]:
    detok = IncrementalDetokenizer(ByteTokenizer(), prompt=list(b"prompt: "), stops=stops)
    pieces: list[str] = []
    for byte in text.encode():
        delta = detok.add(byte)
        pieces.append(delta.text)
        if delta.stopped:
            return pieces, True, detok.flush()
    return pieces, False, detok.flush()


def test_multibyte_characters_are_held_until_complete() -> None:
    pieces, stopped, rest = run("héllo ✓")
    assert "".join(pieces) + rest == "héllo ✓"
    assert not stopped
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_ends_the_text_and_is_never_emitted() -> None:
    pieces, stopped, _ = run("The answer is 42.\nUser: next", stops=["\nUser:"])
    assert stopped
    assert "".join(pieces) == "The answer is 42."


def test_partial_stop_is_held_back_then_released_when_it_is_not_a_stop() -> None:
    pieces, stopped, rest = run("a END? no, ENDING END", stops=["ENDX"])
    assert not stopped
    text = "".join(pieces)
    assert text + rest == "a END? no, ENDING END"
    assert rest == "END"  # could still have become "ENDX" when the tokens ran out


def test_earliest_of_several_stops_wins() -> None:
    pieces, stopped, _ = run("one two three", stops=["three", "two"])
    assert stopped and "".join(pieces) == "one "


def test_stop_spanning_many_tokens_at_the_very_start() -> None:
    pieces, stopped, _ = run("STOP here", stops=["STOP"])
    assert stopped and "".join(pieces) == ""
