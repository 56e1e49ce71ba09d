"""When each API token was last used (`last_used_at`), without a write on every request.

A token's time is written at most once per `every_s` (the stored value says when it last was,
and an in-memory note covers writes queued or done since the directory was loaded). A request
only queues the write (`store.write_behind`): one background thread writes what is queued in
batches, one transaction each, so a slow, locked or stalled database never fails or delays a
request, and a write that failed is tried again. `close()` (on a clean shutdown) writes what is
still queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam

from modelhost.store.clock import utcnow
from modelhost.store.db import Database
from modelhost.store.tables import ApiToken, Base
from modelhost.store.write_behind import WriteBehind

TOUCH_EVERY_S = 60.0
# Past this many remembered tokens, notes older than `every_s` are dropped (they no longer
# throttle anything: the stored value does).
_PRUNE_AT = 1024

# A Core statement (not the ORM's bulk update): no ORM events, so the directory's revision
# watch (`store.revision`) does not take it for a change it covers; the database's triggers
# ignore `last_used_at` too.
_TOKENS = Base.metadata.tables[ApiToken.__tablename__]
_TOUCH = (
    _TOKENS.update()
    .where(_TOKENS.c.id == bindparam("token_id"))
    .values(last_used_at=bindparam("at"))
)


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
        retry_s: float = 1.0,
    ) -> None:
        self._db = db
        self._every = timedelta(seconds=every_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._queued: dict[str, datetime] = {}
        self.writes: WriteBehind[str, datetime] = WriteBehind(
            "token-usage", self._write, merge=max, retry_s=retry_s
        )

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
            if len(self._queued) >= _PRUNE_AT:
                self._queued = {k: at for k, at in self._queued.items() if now - at < self._every}
            self._queued[token_id] = now
        self.writes.put(token_id, now)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until what is queued is written (tests, and callers that must read it back)."""
        return self.writes.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Write what is queued (bounded by `timeout_s`), then stop; True when all was."""
        return self.writes.close(timeout_s)

    def _write(self, batch: Mapping[str, datetime]) -> None:
        with self._db.session() as s:
            s.connection().execute(
                _TOUCH, [{"token_id": token_id, "at": at} for token_id, at in batch.items()]
            )
