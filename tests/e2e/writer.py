"""A client that writes a sequence number every 50 ms through a database's endpoint,
reconnecting on error: what a switchover, move or failover costs it (the write gap) and
whether every acknowledged write is there afterwards. :class:`Writer` speaks PostgreSQL;
:class:`MariaDbWriter` and :class:`RedisWriter` the other engines, the same way."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass
class Writer:
    dsn: str
    interval: float = 0.05
    acked: list[tuple[int, float]] = field(default_factory=list)  # (seq, monotonic time)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def running(cls, dsn: str, warmup: float = 1.0) -> Writer:
        """A writer on a fresh table, writing for ``warmup`` seconds already."""
        writer = cls(dsn)
        writer.prepare()
        writer.start()
        time.sleep(warmup)
        return writer

    def prepare(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute("DROP TABLE IF EXISTS onep_writes")
            conn.execute("CREATE TABLE onep_writes (seq int PRIMARY KEY)")

    # What an engine's writer changes: its client.
    def _connect(self) -> Any:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)

    def _write(self, conn: Any, seq: int) -> None:
        conn.execute("INSERT INTO onep_writes VALUES (%s)", (seq,))

    def present(self) -> set[int]:
        """The sequence numbers the database has."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            return {row[0] for row in conn.execute("SELECT seq FROM onep_writes")}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        conn: Any = None
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if conn is None:
                    conn = self._connect()
                seq += 1
                self._write(conn, seq)
                self.acked.append((seq, time.monotonic()))
            except Exception as exc:  # any client's error: a write not acknowledged
                self.errors.append(f"{time.monotonic():.3f} {type(exc).__name__}: {exc}"[:300])
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def wait_for_writes(self, count: int, since: float, timeout: float = 120.0) -> int:
        """Wait until ``count`` writes were acknowledged after ``since`` (or ``timeout``
        passed); returns how many were. A client on a loaded machine may need seconds to
        reconnect after a switch: how long is a measurement, not a pass mark."""
        deadline = time.monotonic() + timeout
        while True:
            done = sum(1 for _, t in self.acked if t > since)
            if done >= count or time.monotonic() > deadline:
                return done
            time.sleep(0.1)

    def gap(self, since: float | None = None) -> float:
        """The longest interval without an acknowledged write (from ``since`` on)."""
        times = [t for _, t in self.acked if since is None or t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def missing(self) -> list[int]:
        """Acknowledged sequence numbers the database does not have."""
        present = self.present()
        return [seq for seq, _ in self.acked if seq not in present]


def _endpoint(dsn: str) -> dict[str, str]:
    """A writer's "dsn" for MariaDB and Redis: ``key=value`` words, as libpq's."""
    return dict(word.split("=", 1) for word in dsn.split())


@dataclass
class MariaDbWriter(Writer):
    """``dsn``: "host=H port=P user=U password=W dbname=D"."""

    def _connect(self) -> Any:
        import pymysql

        e = _endpoint(self.dsn)
        return pymysql.connect(
            host=e["host"], port=int(e["port"]), user=e["user"], password=e["password"],
            database=e["dbname"], autocommit=True, connect_timeout=2, read_timeout=10,
            write_timeout=10,
        )  # fmt: skip

    def prepare(self) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS onep_writes")
            cur.execute("CREATE TABLE onep_writes (seq int PRIMARY KEY)")

    def _write(self, conn: Any, seq: int) -> None:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO onep_writes VALUES (%s)", (seq,))

    def present(self) -> set[int]:
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT seq FROM onep_writes")
            return {int(row[0]) for row in cur.fetchall()}


@dataclass
class RedisWriter(Writer):
    """``dsn``: "host=H port=P user=U password=W"; the writes go to one set, ``onep_writes``."""

    def _connect(self) -> Any:
        import redis

        e = _endpoint(self.dsn)
        client = redis.Redis(
            host=e["host"], port=int(e["port"]), username=e["user"], password=e["password"],
            socket_connect_timeout=2, socket_timeout=10, retry_on_timeout=False,
        )  # fmt: skip
        client.ping()
        return client

    def prepare(self) -> None:
        client = self._connect()
        client.delete("onep_writes")
        client.close()

    def _write(self, conn: Any, seq: int) -> None:
        conn.sadd("onep_writes", seq)

    def present(self) -> set[int]:
        client = self._connect()
        try:
            return {int(n) for n in client.smembers("onep_writes")}
        finally:
            client.close()


def under_writer(
    plat: Any,
    name: str,
    writer: type[Writer],
    dsn: str,
    has_write: Callable[[dict[str, Any], int], bool],
    *action: str,
) -> dict[str, Any]:
    """``onep db ACTION NAME ...`` under a writer on the read-write endpoint: every
    acknowledged write is there after, the group is a primary and a replica again, and the
    replica (the former primary) follows the new one: it has the last write."""
    w = writer.running(dsn)
    try:
        plat.run("db", action[0], name, *action[1:], "--wait", timeout=1800)
        time.sleep(1.0)
    finally:
        w.stop()
    assert len(w.acked) > 20, (action, w.errors[-3:])
    assert w.missing() == [], action  # every acknowledged write
    shown = plat.json("db", "show", name)
    assert shown["status"] == "ACTIVE", shown
    deadline = time.monotonic() + 90  # a move's former primary retires
    while True:
        members = plat.json("db", "show", name)["members"]
        roles = sorted((m["role"], m["state"]) for m in members)
        if roles == [("primary", "ACTIVE"), ("replica", "ACTIVE")]:
            break
        assert time.monotonic() < deadline, members
        time.sleep(1.0)
    replica = next(m for m in members if m["role"] == "replica")
    last = w.acked[-1][0]
    deadline = time.monotonic() + 60
    while not has_write(replica, last):
        assert time.monotonic() < deadline, (action, replica)
        time.sleep(0.5)
    return plat.json("db", "show", name)
