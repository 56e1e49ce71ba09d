"""Database engine, sessions and migrations.

SQLite runs in WAL mode with a busy timeout (readers never block the writer; concurrent writers
wait instead of failing). PostgreSQL is used as-is. Migrations run at start-up with Alembic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from modelhost.security.file_modes import private_file

_MIGRATIONS = Path(__file__).parent / "migrations"


def _private_sqlite_files(url: str) -> None:
    """Create the database file 0600 before SQLite does (it would use the umask, typically
    0644); SQLite gives its -wal and -shm files the database file's mode. Existing files are
    made 0600 too."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]
    try:
        if not path.exists():
            private_file(path)  # empty, which SQLite takes as a new database
        for file in (path, *sides):
            if file.is_file():
                private_file(file)
    except OSError:
        # An unusable path (no such folder, not writable) is SQLite's to report when it
        # first connects, as before.
        return


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _private_sqlite_files(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            # NORMAL in WAL mode is durable across application crashes, which is what a
            # server restart is; FULL would only add power-loss durability at a write cost.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(url: str) -> None:
    """Bring the schema to the latest revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        migrate(self.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error."""
        with self._sessions() as s, s.begin():
            yield s

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.engine.dispose()
