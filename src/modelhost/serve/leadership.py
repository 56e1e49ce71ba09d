"""Which server process runs the control loops (issue 14): the lease watcher, and the routing
table followers read from the database.

`LeaseWatcher` tries for the lease (`store/leases.py`) every `renew_every_s` and applies the
rules of `domain/leader_lease.py`: on a win it calls `on_elected` (the loops adopt the replicas
and start), and as soon as its local deadline passes without a newer win it calls `on_deposed`
(the loops stop at once, replicas keep running) — whatever an attempt still in flight may answer,
so a stalled database cannot keep a deposed leader acting. One attempt at a time, in a thread.

`RoutingFeed` is what a follower's gateway routes by: the `ready` replica rows the leader
writes, read every `poll_s` and published like the reconciler's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from sqlalchemy import select

from modelhost.domain import leader_lease as rules
from modelhost.domain.replicas import ReplicaState
from modelhost.domain.routing import ReplicaEndpoint
from modelhost.orchestrator.backends.local_process import is_same_process, proc_start_ticks
from modelhost.store import deployments as store
from modelhost.store import leases
from modelhost.store.db import Database
from modelhost.store.tables import Deployment, Replica

log = logging.getLogger(__name__)


def this_machine() -> str:
    """Which boot of which host, and which pid namespace, this process runs in: two processes
    that agree on it see the same pids ("" where that cannot be told: never the same)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    inode = "".join(ch for ch in pidns if ch.isdigit())
    return f"{boot.replace('-', '')[:16]}.{inode}"


def gone_from_this_machine(holder: str, machine: str) -> bool:
    """The holder ran on this machine and its process is gone (a server killed and started
    again): its lease need not be waited out."""
    parsed = leases.parse_holder(holder)
    if parsed is None or not machine:
        return False
    pid, ticks, where = parsed
    return where == machine and not is_same_process(pid, ticks)


class LeaseWatcher:
    def __init__(
        self,
        db: Database,
        timing: rules.LeaseTiming,
        on_elected: Callable[[], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        take_from_dead_local: bool = True,
    ) -> None:
        self.db = db
        self.timing = timing
        self.machine = this_machine()
        self.holder = holder or leases.holder_id(proc_start_ticks(os.getpid()) or 0, self.machine)
        # Take the lease at once from a holder on this machine whose process is gone.
        self.take_from_dead_local = take_from_dead_local
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._clock = clock
        self.state = rules.LeaseState()
        # Whether the leader's loops run in this process (what `on_elected` started).
        self.acting = False
        self.last_pass: float | None = None  # monotonic time the watcher last looked

    @property
    def leading(self) -> bool:
        return self.acting and self.state.leading(self._clock())

    def _attempt(self) -> rules.Outcome:
        try:
            with self.db.session() as s:
                won = leases.try_acquire(s, self.holder, self.timing.ttl_s)
            if not won and self.take_from_dead_local:
                with self.db.session() as s:
                    row = leases.read(s)
                    if (
                        row is not None
                        and row.holder is not None
                        and gone_from_this_machine(row.holder, self.machine)
                        and leases.take_from(s, row.holder, self.holder, self.timing.ttl_s)
                    ):
                        log.info(
                            "leader lease: taken from %s, a process on this host that is gone",
                            row.holder,
                        )
                        won = True
        except Exception as exc:
            if self.state.failures == 0:
                log.warning("leader lease: cannot reach the database (%s)", exc)
            return rules.Outcome.FAILED
        return rules.Outcome.WON if won else rules.Outcome.LOST

    async def acquire_once(self) -> None:
        """One attempt, waited for (at start-up: a lone server leads before it serves)."""
        began = self._clock()
        self.state = rules.began_attempt(self.state, began)
        outcome = await asyncio.to_thread(self._attempt)
        await self._fold(outcome, began)

    async def run(self) -> None:
        attempt: asyncio.Future[rules.Outcome] | None = None
        began = 0.0
        while True:
            now = self._clock()
            self.last_pass = time.monotonic()
            self.state, change = rules.check(self.state, self.acting, now)
            await self._apply(change)
            if attempt is not None and attempt.done():
                outcome = attempt.result()
                attempt = None
                await self._fold(outcome, began)
                continue
            if attempt is None and rules.attempt_due(self.state, self.timing, now):
                began = now
                self.state = rules.began_attempt(self.state, now)
                attempt = asyncio.ensure_future(asyncio.to_thread(self._attempt))
            wait = rules.next_wake(self.state, self.timing, self._clock())
            if attempt is not None:
                await asyncio.wait({attempt}, timeout=max(wait, 0.01))
            else:
                await asyncio.sleep(max(wait, 0.01))

    async def _fold(self, outcome: rules.Outcome, began: float) -> None:
        failures = self.state.failures
        self.state, change = rules.after_attempt(
            self.state, self.timing, outcome, began, self._clock(), self.acting
        )
        if failures and outcome is not rules.Outcome.FAILED:
            log.info("leader lease: the database answers again")
        await self._apply(change)

    async def _apply(self, change: rules.Change) -> None:
        if change is rules.Change.ELECTED:
            self.acting = True
            log.info("leader lease: this process (%s) leads the control plane", self.holder)
            await self._on_elected()
        elif change is rules.Change.DEPOSED:
            self.acting = False
            log.warning(
                "leader lease: lost or not renewed in time; stopping the control loops "
                "(replicas keep running for the next leader)"
            )
            await self._on_deposed()

    def release(self) -> None:
        """Give the lease up (blocking; at a clean shutdown, after the loops stopped)."""
        try:
            with self.db.session() as s:
                leases.release(s, self.holder)
        except Exception as exc:
            log.warning("leader lease: not released (%s); it expires by itself", exc)


def routing_rows(db: Database) -> dict[str, list[ReplicaEndpoint]]:
    """The routing table as the leader last wrote it: every `ready` replica row, with its
    deployment's limits (blocking)."""
    table: dict[str, list[ReplicaEndpoint]] = {}
    with db.session() as s:
        rows = s.execute(
            select(Replica, Deployment)
            .join(Deployment, Replica.deploy_id == Deployment.id)
            .where(
                Replica.exited_at.is_(None),
                Replica.state == ReplicaState.READY.value,
                Replica.port.is_not(None),
                Deployment.deleted_at.is_(None),
            )
            .order_by(Replica.id)
        ).all()
        for rep, dep in rows:
            config = store.config_of(dep)
            engine = rep.engine or (config.engine if config.engine != "auto" else "builtin")
            table.setdefault(dep.id, []).append(
                ReplicaEndpoint(
                    rep.id,
                    dep.id,
                    f"http://{rep.host or '127.0.0.1'}:{rep.port}",
                    config.max_batch_size,
                    rep.generation,
                    config.max_active_adapters,
                    engine,
                )
            )
    return table


class RoutingFeed:
    """A follower's routing table, from the database, every `poll_s` while it runs."""

    def __init__(
        self,
        db: Database,
        publish: Callable[[Mapping[str, Sequence[ReplicaEndpoint]]], None],
        poll_s: float,
    ) -> None:
        self._db = db
        self._publish = publish
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, list[ReplicaEndpoint]] | None = None
        self._failing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._last = None
            self._task = asyncio.create_task(self._run(), name="routing-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                table = await asyncio.to_thread(routing_rows, self._db)
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("routing feed: cannot read replicas (%s); keeping the last", exc)
            else:
                self._failing = False
                if table != self._last:
                    self._last = table
                    self._publish(table)
            await asyncio.sleep(self._poll_s)
