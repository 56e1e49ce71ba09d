"""The directory one server process serves from, kept current.

- Its own writes: after every commit in this process that touched users, tokens, deployments or
  adapters, the revision is re-read and, if it moved, the directory reloaded, before the
  request that wrote returns (`store.revision.watch`). On the event loop (where a blocking
  read must not run) the poller is woken instead.
- Other processes' writes: a poller re-reads the revision every `POLL_S` (one tiny query) and
  reloads when it moved, so a revoked token or a deleted deployment stops being served within
  about that on every process sharing the database.
- A lookup that misses (a token or model this process has not seen yet, perhaps created
  elsewhere a moment ago) re-checks once at once before answering 401/404; concurrent misses
  share the check.

If the database stalls or fails, the last snapshot keeps being served; the poller logs the
outage once and reloads when the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from modelhost.directory.load import load
from modelhost.directory.snapshot import Snapshot
from modelhost.store import revision
from modelhost.store.db import Database

log = logging.getLogger(__name__)

# How often each process re-reads the revision: other processes' changes show within this
# plus one reload (the promise to operators is 1 s).
POLL_S = 0.25
# How long a lookup that missed waits for its re-check before answering from what it has
# (the database may be stalled).
MISS_WAIT_S = 1.0


@dataclass
class _Check:
    """One re-check after misses; `started` (monotonic) once it holds the reload lock."""

    future: asyncio.Future[bool]
    started: float | None = None
    task: asyncio.Task[None] | None = None


class Directory:
    def __init__(self, db: Database, poll_s: float = POLL_S) -> None:
        self._db = db
        self._poll_s = poll_s
        self.snapshot = Snapshot(revision=-1)  # nothing loaded yet: the first check loads
        self.checked_at: float | None = None  # monotonic time of the last successful check
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._check: _Check | None = None
        self._next: _Check | None = None  # the check after the running one
        self._failing = False
        revision.watch(db.engine, self._committed)

    # ---- reading the database (blocking) ------------------------------------------------
    def refresh(self, check: _Check | None = None) -> bool:
        """Re-read the revision and reload when it moved; True when a new snapshot was
        installed. Blocking: call it in a thread (or from a sync route)."""
        with self._lock:
            if check is not None:
                check.started = time.monotonic()
            started = time.monotonic()
            with self._db.session() as s:
                current = revision.read(s)
            reloaded = current != self.snapshot.revision
            if reloaded:
                self.snapshot = load(self._db)
            self.checked_at = started
            return reloaded

    def age_s(self) -> float | None:
        """Seconds since the database last confirmed the snapshot (None: never loaded)."""
        checked = self.checked_at
        return None if checked is None else time.monotonic() - checked

    def _committed(self) -> None:
        """This process committed a change the directory covers (store.revision.watch)."""
        loop = self._loop
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        if on_loop and loop is not None:
            # Never block the event loop on the database: the poller reloads at once.
            self._wake_poller(loop)
        else:
            self.refresh()

    # ---- the poller (on the event loop) -------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._poll(), name="directory-poller")

    async def stop(self) -> None:
        revision.unwatch(self._db.engine, self._committed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._loop = None

    def _wake_poller(self, loop: asyncio.AbstractEventLoop) -> None:
        wake = self._wake
        if wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def _poll(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.to_thread(self.refresh)
                if self._failing:
                    self._failing = False
                    log.info("directory: the database answers again; serving current state")
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "directory: cannot read the database (%s); serving the last snapshot "
                        "(revision %s) until it answers",
                        exc,
                        self.snapshot.revision,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()

    async def fresh(self) -> Snapshot:
        """After a miss: the snapshot as of a check that began after this call (concurrent
        misses share one), or the current one if that check fails or takes over MISS_WAIT_S.

        One check runs at a time: a miss that arrives after the running check began waits for
        the next one, which starts when that one ends. A stalled database so holds one thread,
        however many misses arrive meanwhile (each answered after MISS_WAIT_S)."""
        asked = time.monotonic()
        check = self._check
        if check is None or check.future.done():
            check = self._check = self._start(self._new_check())
        elif check.started is not None and check.started < asked:
            if self._next is None:
                self._next = self._new_check()
            check = self._next
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(check.future), MISS_WAIT_S)
        return self.snapshot

    def _new_check(self) -> _Check:
        return _Check(asyncio.get_running_loop().create_future())

    def _start(self, check: _Check) -> _Check:
        check.task = asyncio.create_task(self._run_check(check))
        return check

    async def _run_check(self, check: _Check) -> None:
        try:
            reloaded = await asyncio.to_thread(self.refresh, check)
        except Exception as exc:
            check.future.set_exception(exc)
            check.future.exception()  # retrieved: a failed check is not an unhandled error
        else:
            check.future.set_result(reloaded)
        following, self._next = self._next, None
        if following is not None:
            self._check = self._start(following)
