"""Leases of the background loops (ops/leases.py) and a safe start-up of several processes
on one store, on SQLite and on the real PostgreSQL (the ``store`` fixture runs both)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from oneplatform.config import Settings
from oneplatform.ops.leases import LoopLeases, acquire, release
from oneplatform.server import prepare
from oneplatform.store.db import Store
from oneplatform.store.models import LoopLease, Project, Token, utcnow

T0 = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def _take(store: Store, holder: str, at: dt.datetime, seconds: float = 10) -> int | None:
    with store.session() as session:
        return acquire(session, "reconciler", holder, seconds, now=at)


def _row(store: Store) -> LoopLease:
    with store.session() as session:
        return session.get_one(LoopLease, "reconciler")


def test_two_holders_one_lease(store: Store) -> None:
    assert _take(store, "a", T0) == 1
    assert _take(store, "b", T0 + dt.timedelta(seconds=1)) is None  # a's has not expired
    assert _take(store, "a", T0 + dt.timedelta(seconds=5)) == 1  # renewed, same generation
    assert _take(store, "b", T0 + dt.timedelta(seconds=12)) is None  # renewal moved the end
    row = _row(store)
    assert (row.holder, row.generation) == ("a", 1)
    assert row.expires_at == T0 + dt.timedelta(seconds=15)


def test_expired_lease_is_taken_over_with_a_new_generation(store: Store) -> None:
    assert _take(store, "a", T0) == 1
    assert _take(store, "b", T0 + dt.timedelta(seconds=11)) == 2  # a stopped renewing
    assert _take(store, "a", T0 + dt.timedelta(seconds=12)) is None  # a lost it
    assert _take(store, "b", T0 + dt.timedelta(seconds=13)) == 2
    assert _take(store, "a", T0 + dt.timedelta(seconds=30)) == 3
    row = _row(store)
    assert (row.holder, row.generation) == ("a", 3)
    assert row.acquired_at == T0 + dt.timedelta(seconds=30)


def test_released_lease_is_taken_at_once(store: Store) -> None:
    now = utcnow()
    assert _take(store, "a", now) == 1
    with store.session() as session:
        release(session, "reconciler", "b")  # not b's: nothing happens
    assert _take(store, "b", now) is None
    with store.session() as session:
        release(session, "reconciler", "a")
    assert _take(store, "b", utcnow()) == 2


def _race(store: Store, holders: list[str], at: dt.datetime) -> list[tuple[str, int]]:
    """Every holder asks at once, each on a connection of its own: who got the lease."""
    barrier = threading.Barrier(len(holders))
    won: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def ask(holder: str) -> None:
        try:
            barrier.wait()
            generation = _take(store, holder, at)
            if generation is not None:
                won.append((holder, generation))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(h,)) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return won


def test_racing_holders_exactly_one_wins(store: Store) -> None:
    """Eight holders ask at the same moment, over and over as the lease expires: every
    round has exactly one winner, and the generation grows when the holder changes."""
    holders = [f"h{i}" for i in range(8)]
    last: tuple[str, int] | None = None
    for round_ in range(5):
        won = _race(store, holders, T0 + dt.timedelta(seconds=20 * round_))
        assert len(won) == 1, won
        holder, generation = won[0]
        if last is not None:
            assert generation == last[1] + (holder != last[0])
        last = won[0]
        row = _row(store)
        assert (row.holder, row.generation) == last
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(LoopLease)) == 1


def _leases(
    store: Store, settings: Settings, holder: str, runs: list[tuple[str, str]]
) -> LoopLeases:
    def loop(_store: Store, _settings: Settings, stop: threading.Event) -> None:
        while not stop.is_set():
            runs.append((holder, "round"))
            stop.wait(0.05)

    return LoopLeases(store, settings, {"reconciler": loop}, holder=holder)


def test_loop_runs_in_one_process_and_moves_when_its_holder_dies(
    store: Store, settings: Settings
) -> None:
    settings.loop_lease_seconds = 1.0
    runs: list[tuple[str, str]] = []
    a = _leases(store, settings, "a", runs)
    b = _leases(store, settings, "b", runs)
    a.tick()
    b.tick()
    assert a.held() == {"reconciler": 1} and b.held() == {}
    time.sleep(0.3)
    assert {h for h, _ in runs} == {"a"}
    # a "dies": it neither renews nor runs (its loop thread is stopped by hand), b waits
    # for the lease to expire and takes the loop over.
    for loop in a.loops:
        loop.stop.set()
    assert a.loops[0].thread is not None
    a.loops[0].thread.join(timeout=5)
    runs.clear()
    b.tick()
    assert b.held() == {}
    deadline = time.monotonic() + 10
    while not b.held() and time.monotonic() < deadline:
        time.sleep(0.2)
        b.tick()
    assert b.held() == {"reconciler": 2}
    time.sleep(0.3)
    assert {h for h, _ in runs} == {"b"}
    b.close()  # gives it back: a takes it at once
    a.tick()
    assert a.held() == {"reconciler": 3}
    a.close()


def test_a_holder_that_cannot_renew_stops_its_loop_before_the_lease_ends(
    store: Store, settings: Settings
) -> None:
    settings.loop_lease_seconds = 1.0
    runs: list[tuple[str, str]] = []
    a = _leases(store, settings, "a", runs)
    a.tick()
    assert a.held() == {"reconciler": 1}

    def unreachable() -> None:
        raise OSError("the store does not answer")

    a.store = type("Down", (), {"session": staticmethod(unreachable)})()  # type: ignore[assignment]
    a.tick()  # fails, but the lease is still sure for 0.8 s
    assert a.held() == {"reconciler": 1}
    time.sleep(0.9)
    a.tick()
    assert a.held() == {}
    thread = a.loops[0].thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_renewal_that_hangs_does_not_keep_the_loop_running(
    store: Store, settings: Settings
) -> None:
    """A store that stops answering mid-renewal (a partition): the watchdog stops the loop
    when its lease is no longer sure, while the renewal still waits."""
    settings.loop_lease_seconds = 1.0
    runs: list[tuple[str, str]] = []
    a = _leases(store, settings, "a", runs)
    stop, answered = threading.Event(), threading.Event()
    real = a.store

    class Hanging:
        def session(self) -> Any:
            answered.wait(30)  # until the test lets it go
            return real.session()

    runner = threading.Thread(target=a.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 10
    while not a.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.held() == {"reconciler": 1}
    a.store = Hanging()  # type: ignore[assignment]
    time.sleep(1.5)  # past the 0.8 s the lease is sure for; the renewal still hangs
    assert a.held() == {}
    thread = a.loops[0].thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()
    runs.clear()
    time.sleep(0.2)
    assert runs == []
    stop.set()
    a.store = real
    answered.set()
    runner.join(timeout=10)


def test_processes_starting_at_once_migrate_and_make_one_admin(
    store_url: str, tmp_path: Path
) -> None:
    """Three start-ups at once on an empty store (one home, as processes on one machine):
    migrated once, one admin project, one live admin token, the one in the token file."""
    settings = Settings(
        home=tmp_path / "home",
        database_url=store_url,
        libvirt_uri="test:///nonexistent",
        bmlab_file=tmp_path / "no-bmlab.json",
    )
    tokens: list[str | None] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            s, token = prepare(settings)
            tokens.append(token)
            s.dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(tokens)) == 1
    assert settings.admin_token_file.read_text().strip() == tokens[0]
    check = Store(store_url)
    try:
        with check.session() as session:
            assert session.scalar(select(func.count()).where(Project.name == "admin")) == 1
            live = session.scalars(select(Token).where(Token.revoked_at.is_(None))).all()
            assert len(live) == 1
    finally:
        check.dispose()
