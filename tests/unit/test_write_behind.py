"""The write-behind queue: callers never wait for the database, writes go out in batches, a
failing database delays writes without losing them, and a clean close writes what is queued."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from modelhost.store.write_behind import WriteBehind


class Sink:
    """A `write` callback that records batches; it can be held (a slow database) or made to
    fail (a database that is down)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failures = 0  # how many more calls fail

    def __call__(self, batch: Mapping[str, int]) -> None:
        self.entered.set()
        self.gate.wait(10)
        if self.failures:
            self.failures -= 1
            raise OSError("database unavailable")
        self.batches.append(dict(batch))

    def written(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for batch in self.batches:
            out.update(batch)
        return out


def test_items_queued_during_a_write_go_out_together_in_the_next() -> None:
    sink = Sink()
    wb: WriteBehind[str, int] = WriteBehind("t", sink)
    sink.gate.clear()
    assert wb.put("a", 1)
    assert sink.entered.wait(5)  # the first batch is being written, and held
    started = time.monotonic()
    for i in range(100):
        wb.put(f"k{i % 10}", i)  # ten keys, each put ten times
    assert time.monotonic() - started < 0.5  # puts never wait for the write
    assert wb.pending == 11
    sink.gate.set()
    assert wb.flush(5)
    assert sink.batches[0] == {"a": 1}
    assert sink.batches[1] == {f"k{j}": 90 + j for j in range(10)}  # merged: the newest
    assert len(sink.batches) == 2
    assert wb.close()


def test_merge_decides_between_an_older_and_a_newer_value() -> None:
    sink = Sink()
    wb: WriteBehind[str, int] = WriteBehind("t", sink, merge=max)
    sink.gate.clear()
    wb.put("x", 0)
    assert sink.entered.wait(5)
    for value in (5, 9, 3):
        wb.put("y", value)
    sink.gate.set()
    assert wb.close()
    assert sink.written() == {"x": 0, "y": 9}


def test_a_failed_batch_is_retried_under_newer_values() -> None:
    sink = Sink()
    sink.failures = 2
    wb: WriteBehind[str, int] = WriteBehind("t", sink, retry_s=0.05)
    sink.gate.clear()
    wb.put("a", 1)
    wb.put("b", 1)
    assert sink.entered.wait(5)
    wb.put("b", 2)  # newer than the batch that is about to fail
    sink.gate.set()
    assert wb.flush(5)
    assert sink.written() == {"a": 1, "b": 2}
    assert sink.failures == 0
    assert wb.close()


def test_close_writes_what_is_queued() -> None:
    sink = Sink()
    wb: WriteBehind[str, int] = WriteBehind("t", sink)
    sink.gate.clear()
    for i in range(50):
        wb.put(str(i), i)
    sink.gate.set()
    assert wb.close(5)
    assert sink.written() == {str(i): i for i in range(50)}
    assert not wb.put("late", 1)  # after close: refused, not queued


def test_close_retries_until_its_deadline_then_gives_up() -> None:
    sink = Sink()
    sink.failures = 10**6
    wb: WriteBehind[str, int] = WriteBehind("t", sink, retry_s=10)
    wb.put("a", 1)
    assert sink.entered.wait(5)
    started = time.monotonic()
    assert not wb.close(0.3)  # the retry wait is cut short by the close, and bounded
    assert time.monotonic() - started < 3
    assert sink.written() == {}
    assert wb.pending == 1


def test_close_during_a_stall_writes_once_the_database_answers() -> None:
    sink = Sink()
    wb: WriteBehind[str, int] = WriteBehind("t", sink)
    sink.gate.clear()
    wb.put("a", 1)
    assert sink.entered.wait(5)
    wb.put("b", 2)
    threading.Timer(0.2, sink.gate.set).start()  # the stall ends during the close
    assert wb.close(5)
    assert sink.written() == {"a": 1, "b": 2}


def test_a_full_queue_drops_new_keys_but_merges_known_ones() -> None:
    sink = Sink()
    wb: WriteBehind[str, int] = WriteBehind("t", sink, max_pending=2)
    sink.gate.clear()
    wb.put("first", 0)
    assert sink.entered.wait(5)  # "first" is being written; two more fit in the queue
    assert wb.put("a", 1) and wb.put("b", 1)
    assert not wb.put("c", 1)
    assert wb.put("a", 2)
    assert wb.dropped == 1
    sink.gate.set()
    assert wb.close()
    assert sink.written() == {"first": 0, "a": 2, "b": 1}


def test_nothing_queued_needs_no_thread() -> None:
    wb: WriteBehind[str, int] = WriteBehind("t", Sink())
    assert wb.flush(0.1)
    assert wb.close(0.1)
