"""When each API token was last used (`last_used_at`), without a write on every request.

A token's time is written at most once per `every_s` (the stored value says when it last was,
and an in-memory note covers writes still queued), by one background thread: a request only
queues the write, so a slow or locked database never fails or delays it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from modelhost.store.clock import utcnow
from modelhost.store.db import Database
from modelhost.store.tables import ApiToken

log = logging.getLogger(__name__)

TOUCH_EVERY_S = 60.0
# Past this many remembered tokens, notes older than `every_s` are dropped (they no longer
# throttle anything: the stored value does).
_PRUNE_AT = 1024


def _aware(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were stored as UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class TokenUsage:
    def __init__(
        self,
        db: Database,
        *,
        every_s: float = TOUCH_EVERY_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._every = timedelta(seconds=every_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._queued: dict[str, datetime] = {}
        self._queue: queue.SimpleQueue[tuple[str, datetime] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def due(self, token_id: str, stored: datetime | None, now: datetime) -> bool:
        """Whether a use at `now` should be written, given the stored `last_used_at`."""
        with self._lock:
            latest = [_aware(at) for at in (stored, self._queued.get(token_id)) if at is not None]
        return not latest or now - max(latest) >= self._every

    def seen(self, token_id: str, stored: datetime | None) -> None:
        """A request authenticated with this token; queue a write when one is due."""
        now = self._clock()
        if not self.due(token_id, stored, now):
            return
        with self._lock:
            if self._closed:
                return
            if len(self._queued) >= _PRUNE_AT:
                self._queued = {k: at for k, at in self._queued.items() if now - at < self._every}
            self._queued[token_id] = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="token-usage", daemon=True)
                self._thread.start()
        self._queue.put((token_id, now))

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (bounded by `timeout_s`), then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            token_id, at = item
            try:
                with self._db.session() as s:
                    row = update(ApiToken).where(ApiToken.id == token_id)
                    s.execute(row.values(last_used_at=at))
            except Exception as exc:  # bookkeeping only: never worth more than a warning
                log.warning("could not record the use of token %s: %s", token_id, exc)
