"""Replica log lines get the time the local backend first saw them (log_stamps)."""

from __future__ import annotations

import os
from pathlib import Path

from modelhost.orchestrator.backends import log_stamps


def write(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_each_line_gets_the_first_note_past_it(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    write(log, "one\ntwo\n")
    known = log_stamps.note_growth(str(log), 0, 100.0)
    assert known == 8
    assert log_stamps.note_growth(str(log), known, 101.0) == 8  # no growth, no note
    write(log, "three\n")
    known = log_stamps.note_growth(str(log), known, 102.5)
    write(log, "four\nfive")  # after the last note; "five" is still being written
    os.utime(log, (200.0, 200.0))
    assert log_stamps.tail(log, 10) == [
        ("one", 100.0),
        ("two", 100.0),
        ("three", 102.5),
        ("four", 200.0),  # between the last note and the last write: the file's mtime
        ("five", 200.0),
    ]
    assert log_stamps.tail(log, 2) == [("four", 200.0), ("five", 200.0)]
    assert (tmp_path / "r.log.stamps").read_text() == "8 100.000\n14 102.500\n"
    # A new monitor (after a server restart) carries on from the last note.
    assert log_stamps.last_noted(str(log)) == 14


def test_a_log_without_stamps_has_no_times(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    write(log, "a\n\nb\rc\n")
    assert log_stamps.tail(log, 10) == [("a", None), ("", None), ("b", None), ("c", None)]
    assert log_stamps.last_noted(str(log)) == 0
    assert log_stamps.tail(tmp_path / "missing.log", 10) == []


def test_long_logs_read_only_their_tail_and_its_notes(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    known = 0
    # ~600 KB of log in 20,000 lines, noted every 10 lines: more than one tail and one chunk
    # of notes.
    for tick in range(2000):
        write(log, "".join(f"line {tick:04d}-{i} {'x' * 20}\n" for i in range(10)))
        known = log_stamps.note_growth(str(log), known, 1000.0 + tick)
    lines = log_stamps.tail(log, 100_000)
    assert len(lines) < 20_000  # only the last TAIL_BYTES, without the line the seek cut
    assert lines[-1] == (f"line 1999-9 {'x' * 20}", 2999.0)
    for text, ts in lines:
        tick = int(text.split()[1].split("-")[0])
        assert ts == 1000.0 + tick, text
    assert log_stamps.last_noted(str(log)) == known


def test_notes_beyond_what_is_read_back_give_no_time(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    write(log, "old\nnew\n")
    # Tens of thousands of notes after "old" (as if the log had been truncated and rewritten):
    # more than read_notes reads back, so the note that timed "old" is never reached.
    stamps = log_stamps.stamps_path(log)
    stamps.write_text("4 50.0\n" + "".join(f"{8 + i} {60.0 + i}\n" for i in range(80_000)))
    notes, complete = log_stamps.read_notes(log, 0)
    assert not complete and notes[0][0] > 8
    assert log_stamps.tail(log, 10)[0] == ("old", None)
