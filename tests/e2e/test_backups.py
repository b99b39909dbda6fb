"""Backups, restores and point-in-time recovery for real: pgBackRest in the guests, the
embedded SeaweedFS store on the host, through the CLI. The nine (source, target) pairs of
the three compute types are restored in tests/e2e/test_three_compute_types.py."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import subprocess
import time
from typing import Any

import psycopg
import pytest

from oneplatform.config import Settings
from oneplatform.hostsvc.objectstore import RepositoryTool
from oneplatform.secrets import box_for
from tests.e2e.conftest import Platform, record_timing, reset_timings
from tests.e2e.test_db_cli import _connect

pytestmark = pytest.mark.e2e

ALICE = "Alice-pw-123"


def _instant(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def _alice(platform: Platform, name: str) -> psycopg.Connection:
    return _connect(platform.json("db", "show", name)["endpoint"], "alice", ALICE, "appdb")


def _checksum(conn: psycopg.Connection) -> tuple[int, str]:
    row = conn.execute(
        "SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _insert(conn: psycopg.Connection, first: int, count: int, tag: str) -> None:
    conn.execute(
        "INSERT INTO t SELECT g, %s || md5(g::text) FROM generate_series(%s::int, %s::int) g",
        (tag, first, first + count - 1),
    )


def _create(platform: Platform, name: str, flavor: str, *more: str) -> dict[str, Any]:
    started = time.monotonic()
    out = platform.json("db", "create", name, "--flavor", flavor, *more, "--wait", timeout=900)
    out["_seconds"] = time.monotonic() - started
    return out


@pytest.fixture(scope="module")
def source(platform: Platform) -> dict[str, Any]:
    """A container database with a table of 20,000 rows, made by its application user."""
    reset_timings("restore")
    db = _create(
        platform, "src", "container.small", "--database", "appdb", "--user", f"alice:{ALICE}"
    )
    with _alice(platform, "src") as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        _insert(conn, 1, 20_000, "a")
    return db


def test_backups_are_a_resource_and_restore_with_their_users(
    platform: Platform, source: dict[str, Any]
) -> None:
    full = platform.json("db", "backup", "create", "src", "--name", "src-full", "--wait")
    assert full["status"] == "COMPLETED" and full["type"] == "full", full
    assert full["database"] == "src" and full["parent"] is None
    assert full["size_bytes"] > 1_000_000 and full["wal_start"] and full["wal_stop"]
    assert _instant(full["started_at"]) <= _instant(full["finished_at"])
    with _alice(platform, "src") as conn:
        _insert(conn, 20_001, 5_000, "b")
        expected = _checksum(conn)
    incr = platform.json(
        "db", "backup", "create", "src", "--type", "incr", "--name", "src-incr", "--wait"
    )
    assert incr["status"] == "COMPLETED" and incr["type"] == "incr"
    assert incr["parent"] == "src-full"
    listed = platform.json("db", "backup", "list", "--database", "src")
    assert [b["name"] for b in listed] == ["src-full", "src-incr"]
    assert platform.json("db", "backup", "show", "src-incr")["id"] == incr["id"]
    # the full cannot go while the incremental builds on it
    refused = platform.run("db", "backup", "delete", "src-full", check=False)
    assert refused.returncode != 0 and "src-incr" in refused.stderr
    assert "backup_has_dependents" in refused.stderr
    shown = platform.json("db", "show", "src")
    assert shown["restorable_from"] == full["finished_at"]
    # instants, not strings: one may carry microseconds and the other none
    assert _instant(shown["restorable_until"]) >= _instant(incr["finished_at"])

    # restored from the incremental (the other compute types: tests/e2e/test_three_compute_types)
    source_admin = platform.json("db", "credentials", "src")
    restored = _create(platform, "from-incr", "container.small", "--restore", "src-incr")
    record_timing("restore", "incremental (container -> container)", restored["_seconds"])
    assert restored["status"] == "ACTIVE"
    with _alice(platform, "from-incr") as conn:  # the source's users, with their passwords
        assert _checksum(conn) == expected
    admin = platform.json("db", "credentials", "from-incr")
    assert admin["password"] != source_admin["password"]  # credentials of its own
    with _connect(restored["endpoint"], "admin", admin["password"], "appdb") as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(restored["endpoint"], "admin", source_admin["password"], "appdb")
    # the restored database archives to a repository of its own and backs up there
    mine = platform.json("db", "backup", "create", "from-incr", "--wait")
    assert mine["status"] == "COMPLETED" and mine["database"] == "from-incr"
    platform.run("db", "delete", "from-incr", "--wait")


def test_point_in_time_recovery_and_a_deleted_databases_window(
    platform: Platform, source: dict[str, Any]
) -> None:
    if not platform.json("db", "backup", "list", "--database", "src"):
        platform.json("db", "backup", "create", "src", "--wait")
    with _alice(platform, "src") as conn:
        _insert(conn, 100_001, 1_000, "before")
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        moment = row[0].isoformat()
        time.sleep(1.5)
        _insert(conn, 200_001, 1_000, "after")
        expected = conn.execute("SELECT count(*) FROM t WHERE id <= %s", (200_000,)).fetchone()
    pitr = _create(
        platform, "pitr", "container.small", "--restore-from", "src", "--to-time", moment
    )
    record_timing("restore", "point in time (container -> container)", pitr["_seconds"])
    with _alice(platform, "pitr") as conn:
        assert conn.execute("SELECT count(*) FROM t WHERE id > 200000").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == expected
    platform.run("db", "delete", "pitr", "--wait")

    # a moment outside the window: a clear refusal that states the window
    outside = platform.run(
        "db", "create", "nope", "--flavor", "container.small",
        "--restore-from", "src", "--to-time", "2001-01-01T00:00:00Z", check=False,
    )  # fmt: skip
    assert outside.returncode != 0 and "outside_window" in outside.stderr
    assert "recovery window" in outside.stderr
    assert not [d for d in platform.json("db", "list") if d["name"] == "nope"]

    # the source is deleted: its backups and its window stay
    platform.run("db", "delete", "src", "--wait")
    assert platform.json("db", "backup", "list", "--database", "src")
    again = _create(
        platform, "after-delete", "container.small", "--restore-from", "src", "--to-time", moment
    )
    assert again["status"] == "ACTIVE"
    with _alice(platform, "after-delete") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == expected
    platform.run("db", "delete", "after-delete", "--wait")


def test_a_schedule_takes_backups_and_retention_expires_old_ones(platform: Platform) -> None:
    _create(platform, "sched", "container.small")
    keep = 20 / 86400  # 20 s of recovery window
    schedule = platform.json(
        "db", "backup", "schedule", "sched", "--every", "10s", "--keep-days", str(keep)
    )
    assert schedule["every_seconds"] == 10 and schedule["next_run_at"]
    deadline = time.monotonic() + 180
    first: str | None = None
    expired, completed = False, []
    while time.monotonic() < deadline and not expired:
        backups = platform.json("db", "backup", "list", "--database", "sched")
        completed = [b for b in backups if b["status"] == "COMPLETED"]
        if first is None and completed:
            first = completed[0]["name"]
        expired = first is not None and first not in {b["name"] for b in backups}
        time.sleep(2)
    assert expired, f"retention expired nothing within 180 s: {completed}"
    assert len(completed) >= 2 and all(b["scheduled"] for b in completed)
    platform.run("db", "backup", "schedule", "sched", "--off")
    off = platform.run("db", "backup", "schedule", "sched", "-o", "json", check=False)
    assert off.returncode != 0 and "no_schedule" in off.stderr

    # archived WAL older than the oldest backup left goes with the backups that needed it
    deadline = time.monotonic() + 120
    while any(b["status"] in ("NEW", "BUILDING") for b in _backups(platform, "sched")):
        assert time.monotonic() < deadline
        time.sleep(1)
    platform.json("db", "backup", "create", "sched", "--name", "sched-last", "--wait")
    oldest = min(
        (b for b in _backups(platform, "sched") if b["status"] == "COMPLETED"),
        key=lambda b: _instant(b["finished_at"]),
    )
    platform.run("db", "backup", "delete", oldest["name"], "--wait")
    left = [b for b in _backups(platform, "sched") if b["status"] == "COMPLETED"]
    segments = _archived_wal(platform, "sched")
    assert segments and min(segments) >= min(b["wal_start"] for b in left), segments
    assert max(segments) >= max(b["wal_stop"] for b in left)
    platform.run("db", "delete", "sched", "--wait")


def _backups(platform: Platform, db: str) -> list[dict[str, Any]]:
    return list(platform.json("db", "backup", "list", "--database", db))


def _archived_wal(platform: Platform, db: str) -> list[str]:
    """The WAL segments in ``db``'s repository, read on the host with its own keys."""
    settings = Settings(home=platform.home, store_port=int(platform.env()["ONEP_STORE_PORT"]))
    box = box_for(settings)
    with sqlite3.connect(platform.home / "oneplatform.db") as conn:
        row = conn.execute(
            "SELECT repo_bucket, repo_access_key, repo_secret_enc, repo_cipher_enc "
            "FROM db_instances WHERE name = ? AND deleted_at IS NULL",
            (db,),
        ).fetchone()
    tool = RepositoryTool(settings, row[0], row[1], box.decrypt(row[2]), box.decrypt(row[3]))
    with tool._config() as conf:
        listed = subprocess.run(
            ["pgbackrest", f"--config={conf}", "--recurse", "repo-ls", "archive/db"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout  # fmt: skip
    return sorted(set(re.findall(r"\b([0-9A-F]{24})-", listed)))
