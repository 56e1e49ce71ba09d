"""The directory revision: read it, and hear about this process's own writes to what it covers.

The database bumps `directory_revision.value` itself (triggers, migration 0003) in every
transaction that changes a user, an API token (not its last use), a deployment's identity,
visibility or status, or an adapter; every writer counts, in any process. Readers poll it.

A process also wants its *own* writes in its directory before it answers the request that
made them (a revoked token must fail on the very next request). `watch(engine, callback)` calls
`callback` after each commit, on that engine, of an ORM session that wrote one of those tables;
the callback re-reads the revision. Writes through other channels are seen by the poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import ORMExecuteState, Session

from modelhost.store.tables import Adapter, ApiToken, Deployment, DirectoryRevision, User

log = logging.getLogger(__name__)

# The tables the revision covers (the triggers say which of their columns count).
COVERED = (User, ApiToken, Deployment, Adapter)
_KEY = "modelhost_directory_written"
_lock = threading.Lock()
_watchers: dict[Engine, list[Callable[[], None]]] = {}


def read(s: Session) -> int:
    """The current revision (0 on a database whose row is missing)."""
    value = s.scalar(select(DirectoryRevision.value).where(DirectoryRevision.id == 1))
    return int(value or 0)


def watch(engine: Engine, callback: Callable[[], None]) -> None:
    with _lock:
        _watchers.setdefault(engine, []).append(callback)


def unwatch(engine: Engine, callback: Callable[[], None]) -> None:
    with _lock:
        callbacks = _watchers.get(engine, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            _watchers.pop(engine, None)


@event.listens_for(Session, "before_flush")
def _flushing(session: Session, _context: Any, _instances: Any) -> None:
    if not session.info.get(_KEY) and any(
        isinstance(obj, COVERED) for obj in (*session.new, *session.dirty, *session.deleted)
    ):
        session.info[_KEY] = True


@event.listens_for(Session, "do_orm_execute")
def _executing(state: ORMExecuteState) -> None:
    # Bulk `update(Model)` / `delete(Model)` statements bypass the flush.
    mapper = state.bind_mapper
    if (state.is_update or state.is_delete) and mapper and issubclass(mapper.class_, COVERED):
        state.session.info[_KEY] = True


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if not session.info.pop(_KEY, False):
        return
    bind = session.bind
    with _lock:
        callbacks = list(_watchers.get(bind, ())) if isinstance(bind, Engine) else []
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the poll catches up; a write must not fail after its commit
            log.exception("directory refresh after a commit failed")


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_KEY, None)
