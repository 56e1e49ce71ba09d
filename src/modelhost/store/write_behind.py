"""Database writes taken off the request path: queued in memory, written by one background
thread in batches, flushed on a clean shutdown.

A request `put`s a keyed item and returns at once: it never waits for, nor fails with, the
database. The thread writes everything queued so far as one batch (one transaction, as the
`write` callback does it), so writes arriving while one is running go out together in the next
one: batches grow with the load and no item waits for a timer. Items with the same key are
merged (`merge(older, newer)`, by default the newer wins): a burst of uses of one token is one
row to write.

If a batch fails (the database is down, locked, stalled past its timeout), its items go back
in the queue under anything newer and the batch is tried again after `retry_s`: a stall
delays these writes, it loses none. `close()` writes what is queued (bounded by its timeout)
and stops the thread; what it could not write is counted in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

RETRY_S = 1.0
# Past this many distinct keys queued (a database down for long under heavy traffic), new keys
# are dropped with a warning rather than growing without bound.
MAX_PENDING = 100_000


def _newer(_older: V, newer: V) -> V:
    return newer


class WriteBehind(Generic[K, V]):
    def __init__(
        self,
        name: str,
        write: Callable[[Mapping[K, V]], None],
        *,
        merge: Callable[[V, V], V] = _newer,
        retry_s: float = RETRY_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.name = name
        self._write = write
        self._merge = merge
        self._retry_s = retry_s
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: dict[K, V] = {}
        self._writing = 0  # items in the batch being written
        self._closing = False
        self._close_by = 0.0
        self._thread: threading.Thread | None = None
        self._failing = False
        self.dropped = 0
        self.batches = 0  # batches written (for tests and logs)

    # ---- the request side (any thread, never blocks on the database) --------------------------
    def put(self, key: K, value: V) -> bool:
        """Queue `value` under `key`; False when closed (or full: the item is dropped)."""
        with self._cond:
            if self._closing:
                return False
            old = self._pending.get(key)
            if old is not None:
                self._pending[key] = self._merge(old, value)
            elif len(self._pending) >= self._max_pending:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning(
                        "%s: %d writes queued; dropping new ones", self.name, len(self._pending)
                    )
                return False
            else:
                self._pending[key] = value
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    @property
    def pending(self) -> int:
        """Items queued or being written."""
        with self._cond:
            return len(self._pending) + self._writing

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far is written (True), or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.notify_all()
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Write what is queued (trying again until `timeout_s` if the database fails), then
        stop the thread. True when nothing was left unwritten."""
        with self._cond:
            self._closing = True
            self._close_by = time.monotonic() + timeout_s
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout_s + 1.0)
        with self._cond:
            left = len(self._pending) + self._writing
        if left:
            log.warning("%s: %d queued writes were not written before shutdown", self.name, left)
        return left == 0

    # ---- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing, nothing left
                batch, self._pending = self._pending, {}
                self._writing = len(batch)
            ok = self._try(batch)
            with self._cond:
                self._writing = 0
                if not ok:
                    # Back in the queue, under whatever arrived meanwhile.
                    for key, value in batch.items():
                        newer = self._pending.get(key)
                        self._pending[key] = value if newer is None else self._merge(value, newer)
                self._cond.notify_all()
                if ok:
                    continue
                if self._closing and time.monotonic() >= self._close_by:
                    return
                wait = self._retry_s
                if self._closing:
                    wait = min(wait, max(0.0, self._close_by - time.monotonic()))
                self._cond.wait(wait)  # a close wakes it for a last try

    def _try(self, batch: Mapping[K, V]) -> bool:
        try:
            self._write(batch)
        except Exception as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "%s: cannot write %d queued items (%s); trying again every %.0fs",
                    self.name,
                    len(batch),
                    exc,
                    self._retry_s,
                )
            return False
        self.batches += 1
        if self._failing:
            self._failing = False
            log.info("%s: writing again", self.name)
        return True
