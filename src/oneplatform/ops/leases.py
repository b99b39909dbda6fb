"""Leases of the background loops: each loop runs in one process at a time, across every
process on one store.

A loop (the reconciler, the health checker, the backup scheduler, the warm keeper, the
failover watcher) is a row of ``loop_leases``: its holder and when the lease expires. A
process takes or renews a loop's lease with one conditional upsert — insert the row, or
update it when this process holds it or when it has expired — that is atomic on PostgreSQL
and on SQLite alike, so two processes can never both get it. ``generation`` grows by one
each time the holder changes: the takeovers of a loop, in order.

:class:`LoopLeases` runs in each process that may run loops (`onep up`, `onep worker`). It
renews its leases every third of their length and starts a loop's thread while it holds the
loop's lease; it sets the loop's stop event as soon as it may no longer be sure to hold it
(a renewal that failed for longer than the lease minus a margin), before another process can
take the lease over. A process that dies stops renewing: its leases expire and another
process takes them. A clean stop gives the leases back at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Table, case, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.store.db import Store
from oneplatform.store.models import LoopLease, utcnow

log = logging.getLogger(__name__)

LoopFn = Callable[[Store, Settings, threading.Event], None]


def holder_name() -> str:
    """This process's name as a lease holder: machine, pid and a random part (a pid is
    reused after a restart; a holder name never is)."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def acquire(
    session: Session, name: str, holder: str, seconds: float, now: dt.datetime | None = None
) -> int | None:
    """Take or renew the lease of loop ``name`` for ``seconds``: the lease's generation
    when ``holder`` holds it now, None when another holder's lease has not expired.

    One statement: ``INSERT … ON CONFLICT (name) DO UPDATE … WHERE holder = :holder OR
    expires_at < :now``. PostgreSQL locks the conflicting row and re-checks the condition
    on its latest version; SQLite runs one writer at a time. Either way only one of two
    competing holders gets the row."""
    now = now or utcnow()
    expires = now + dt.timedelta(seconds=seconds)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = LoopLease.__table__
    assert isinstance(table, Table)
    stmt = insert(table).values(
        name=name, holder=holder, expires_at=expires, generation=1, acquired_at=now
    )
    same = table.c.holder == holder
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={
            "holder": holder,
            "expires_at": expires,
            "generation": case((same, table.c.generation), else_=table.c.generation + 1),
            "acquired_at": case((same, table.c.acquired_at), else_=now),
        },
        where=same | (table.c.expires_at < now),
    ).returning(table.c.generation)
    row = session.execute(upsert).first()
    return None if row is None else int(row[0])


def release(session: Session, name: str, holder: str) -> None:
    """Give the lease of ``name`` back (it expires now) if ``holder`` holds it."""
    session.execute(
        update(LoopLease)
        .where(LoopLease.name == name, LoopLease.holder == holder)
        .values(expires_at=utcnow() - dt.timedelta(seconds=1))
    )


@dataclass
class _Loop:
    name: str
    fn: LoopFn
    generation: int | None = None
    valid_until: float = 0.0  # monotonic: until when this process is sure to hold it
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class LoopLeases:
    """Runs each of ``loops`` in this process while it holds the loop's lease."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        loops: dict[str, LoopFn],
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.holder = holder or holder_name()
        self.seconds = settings.loop_lease_seconds
        self.loops = [_Loop(name, fn) for name, fn in loops.items()]
        self._lock = threading.Lock()  # a loop's generation and thread: renewals vs watchdog

    def run(self, stop: threading.Event) -> None:
        """Renew and run until ``stop``; then stop the loops and give the leases back. A
        watchdog beside it stops a loop when its lease is no longer sure, even while a
        renewal hangs on a store that does not answer."""
        watchdog = threading.Thread(
            target=self._watch, args=(stop,), name="loop-lease-watchdog", daemon=True
        )
        watchdog.start()
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(self.seconds / 3)
        finally:
            self.close()

    def _watch(self, stop: threading.Event) -> None:
        period = max(min(self.seconds / 20, 0.5), 0.01)
        while not stop.wait(period):
            self.expire()

    def expire(self) -> None:
        """Stop every loop whose lease this process is no longer sure to hold."""
        now = time.monotonic()
        with self._lock:
            for loop in self.loops:
                if loop.generation is not None and now >= loop.valid_until:
                    self._follow(loop, None)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="loop-leases", daemon=True)
        thread.start()
        return thread

    def tick(self) -> None:
        """One renewal round: take or renew every loop's lease, start the loops this process
        now holds, stop those it may have lost."""
        for loop in self.loops:
            asked = time.monotonic()
            try:
                with self.store.session() as session:
                    generation = acquire(session, loop.name, self.holder, self.seconds)
            except Exception:  # a store that does not answer: keep what is still sure
                log.exception("loop lease %s: renewal failed", loop.name)
                generation = loop.generation if time.monotonic() < loop.valid_until else None
            else:
                # Sure until the lease's end as of the request, less a margin for clocks.
                if generation is not None:
                    loop.valid_until = asked + self.seconds * 0.8
            with self._lock:
                if generation is not None and time.monotonic() >= loop.valid_until:
                    generation = None  # the answer came too late to be sure of
                self._follow(loop, generation)

    def _follow(self, loop: _Loop, generation: int | None) -> None:
        if generation is None:
            if loop.generation is not None:
                log.warning(
                    "loop lease %s: lost (generation %d, holder %s) at %.3f",
                    loop.name, loop.generation, self.holder, time.time(),
                )  # fmt: skip
                loop.stop.set()
                loop.generation = None
            return
        if loop.generation != generation:
            log.warning(
                "loop lease %s: acquired (generation %d, holder %s) at %.3f",
                loop.name, generation, self.holder, time.time(),
            )  # fmt: skip
            loop.generation = generation
        if loop.thread is None or not loop.thread.is_alive():
            loop.stop = threading.Event()
            loop.thread = threading.Thread(
                target=loop.fn,
                args=(self.store, self.settings, loop.stop),
                name=f"loop-{loop.name}",
                daemon=True,
            )
            loop.thread.start()

    def held(self) -> dict[str, int]:
        """The loops this process holds now, and their generations."""
        return {loop.name: loop.generation for loop in self.loops if loop.generation is not None}

    def close(self) -> None:
        """Stop the loops and give their leases back, so another process takes them at once."""
        for loop in self.loops:
            loop.stop.set()
        for loop in self.loops:
            if loop.generation is None:
                continue
            try:
                with self.store.session() as session:
                    release(session, loop.name, self.holder)
                log.warning(
                    "loop lease %s: released (generation %d, holder %s) at %.3f",
                    loop.name, loop.generation, self.holder, time.time(),
                )  # fmt: skip
            except Exception:
                log.exception("loop lease %s: release failed", loop.name)
            loop.generation = None
