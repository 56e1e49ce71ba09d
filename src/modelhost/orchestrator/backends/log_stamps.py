"""When each line of a replica's log was written, to within one tick of the local backend.

Engines write straight into their log file: nothing stands between them and the disk that could
slow them down, or break their output when the server restarts while they keep running. Instead
the backend's monitor notes, at every tick (`probe_interval_s`), how far each live replica's log
has grown: a line `<size> <unix time>` appended to `<log>.stamps` whenever the size changed. A
log line's time is that of the first note at or past its end, i.e. when the server first saw
it, at most one tick after it was written. Lines past the last note were written between that
note and the log's last modification, so they get the file's mtime. A log without a stamps
file (written before the server kept them) has no times.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

SUFFIX = ".stamps"
TAIL_BYTES = 256 * 1024
# Notes read back for one tail at most (~40k notes); lines older than that have no time.
_NOTES_MAX_BYTES = 1024 * 1024
_CHUNK = 64 * 1024

Note = tuple[int, float]  # (log size in bytes, unix time it was seen)


def stamps_path(log_path: str | Path) -> Path:
    return Path(f"{log_path}{SUFFIX}")


def note_growth(log_path: str, known: int, now: float) -> int:
    """Note the log's size if it grew past `known` bytes. Returns the size noted, or `known`
    when nothing could be noted (tried again next time)."""
    try:
        size = os.stat(log_path).st_size
        if size <= known:
            return known
        with stamps_path(log_path).open("a", encoding="ascii") as out:
            out.write(f"{size} {now:.3f}\n")
    except OSError:
        return known
    return size


def last_noted(log_path: str) -> int:
    """The log size of the last note (0 without notes): where a new monitor carries on."""
    notes, _ = read_notes(log_path, start=1 << 62)
    return notes[-1][0] if notes else 0


def read_notes(log_path: str | Path, start: int) -> tuple[list[Note], bool]:
    """The notes that time the log's bytes from `start` on, read from the end of the stamps
    file, oldest first; and whether they reach back far enough (else the earliest lines they
    would stamp may have an earlier, unread note)."""
    try:
        f = stamps_path(log_path).open("rb")
    except OSError:
        return [], False
    with f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and end - pos < _NOTES_MAX_BYTES:
            prev, pos = pos, max(0, pos - _CHUNK)
            f.seek(pos)
            data = f.read(prev - pos) + data
            first = _parse(_whole_lines(data, pos > 0).split(b"\n", 1)[0])
            if first and first[0][0] < start:
                break
    notes = _parse(_whole_lines(data, pos > 0))
    complete = pos == 0 or (bool(notes) and notes[0][0] < start)
    return notes, complete


def _whole_lines(data: bytes, cut: bool) -> bytes:
    """Drop the first line when the read began mid-file (the seek may have cut it)."""
    return data.split(b"\n", 1)[-1] if cut else data


def _parse(data: bytes) -> list[Note]:
    # A line cut by a seek or still being written does not parse, and is skipped.
    notes = []
    for raw in data.split(b"\n"):
        size, _, at = raw.partition(b" ")
        try:
            notes.append((int(size), float(at)))
        except ValueError:
            continue
    return notes


def tail(log_path: str | Path, limit: int) -> list[tuple[str, float | None]]:
    """The last `limit` lines of a log (from its last TAIL_BYTES), each with its unix time or
    None where it is not known."""
    try:
        with open(log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            base = max(0, size - TAIL_BYTES)
            f.seek(base)
            data = f.read(size - base)
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError:
        return []
    # (text, byte offset just past it); a line cut by the seek is dropped.
    lines: list[tuple[bytes, int]] = []
    pos = 0
    for raw in data.split(b"\n"):
        pos += len(raw) + 1
        lines.append((raw, min(base + pos, size)))
    if data.endswith(b"\n"):
        lines.pop()  # the empty piece after the last newline
    if base > 0 and lines:
        lines.pop(0)
    lines = lines[-limit:]
    if not lines:
        return []
    first_start = lines[0][1] - len(lines[0][0]) - 1
    notes, complete = read_notes(log_path, first_start)
    has_stamps = bool(notes) or stamps_path(log_path).exists()
    sizes = [size for size, _ in notes]
    out: list[tuple[str, float | None]] = []
    for raw, end in lines:
        i = bisect.bisect_left(sizes, end)
        if i < len(notes):
            ts: float | None = None if i == 0 and not complete else notes[i][1]
        else:
            # max: file times come from a coarser clock than the notes' time.time().
            ts = max(mtime, notes[-1][1]) if notes else (mtime if has_stamps else None)
        # Progress bars redraw with "\r"; each redraw reads as a line of its own.
        out.extend((text, ts) for text in raw.decode("utf-8", "replace").splitlines() or [""])
    return out[-limit:]
