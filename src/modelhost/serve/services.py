"""The long-lived parts of one `modelhost serve` process, built once and handed to the API,
the gateway and the control loops (no module-level singletons)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelhost.config import Settings
from modelhost.config.catalog import CatalogModel, build_catalog
from modelhost.directory.live import Directory
from modelhost.security.secretbox import SecretBox
from modelhost.store.db import Database
from modelhost.store.token_usage import TokenUsage

if TYPE_CHECKING:
    from modelhost.orchestrator.inventory import Inventory


@dataclass
class Services:
    settings: Settings
    db: Database
    secrets: SecretBox
    catalog: dict[str, CatalogModel]
    inventory: Inventory
    token_usage: TokenUsage
    # What the request path reads instead of the database (tokens, deployments, adapters).
    directory: Directory
    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self) -> None:
        """Ask the reconciler to run now instead of at its next tick (callable from any
        thread: API handlers run in a thread pool)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake.set)

    async def wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()


def build_services(settings: Settings) -> Services:
    from modelhost.orchestrator.inventory import Inventory

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    db.migrate()
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    directory = Directory(db)
    directory.refresh()
    return Services(
        settings=settings,
        db=db,
        secrets=SecretBox.from_settings(secret, settings.data_dir),
        catalog=build_catalog(settings.catalog),
        inventory=Inventory.discover(
            settings.gpus, settings.cpu_slots, nvidia=settings.discover_gpus
        ),
        token_usage=TokenUsage(db),
        directory=directory,
    )
