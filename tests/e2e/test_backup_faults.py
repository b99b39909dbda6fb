"""Backups under faults, for real: the platform killed mid-backup, the store unreachable, a
bucket full. Nothing is left stuck, the errors are clear, earlier backups stay restorable."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from oneplatform.config import Settings
from oneplatform.hostsvc.objectstore import StoreAdmin
from tests.e2e.conftest import LAB_PORTS, Platform, own_platform
from tests.e2e.test_db_cli import _connect

pytestmark = pytest.mark.e2e

STORE_PORT = "8336"  # its own store: the lab's platform uses 8333, the others' 8339
# On the lab's worker (tests/conftest.py OWN_GROUPS): the lab's port ranges, its own store.
PORTS = {**LAB_PORTS, "ONEP_STORE_PORT": STORE_PORT, "ONEP_REPLICATION_PORT": "8332"}
ALICE = "Alice-pw-123"


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with own_platform(tmp_path_factory, "onep-faults", **PORTS) as p:
        yield p


def _alice(p: Platform, name: str) -> psycopg.Connection:
    return _connect(p.json("db", "show", name)["endpoint"], "alice", ALICE, "appdb")


def _store_pid(p: Platform) -> int:
    return int((p.home / "objectstore" / "weed.pid").read_text().split()[0])


@pytest.fixture(scope="module")
def big(plat: Platform) -> dict[str, Any]:
    """A container database of about 70 MB (a backup takes seconds, not milliseconds)."""
    db = plat.json(
        "db", "create", "big", "--flavor", "container.small", "--database", "appdb",
        "--user", f"alice:{ALICE}", "--size-gb", "2", "--wait", timeout=600,
    )  # fmt: skip
    with _alice(plat, "big") as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute(
            "INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) "
            "FROM generate_series(1::int, 600000::int) g"
        )
    return db


@pytest.fixture(scope="module", autouse=True)
def full(plat: Platform) -> Iterator[dict[str, Any]]:
    """A small database with a full backup whose bucket gets a quota below what it holds,
    made first: the store enforces quotas once a minute, so by the last test of the module
    it refuses writes to it (and the tests between do not wait for that)."""
    db = plat.json("db", "create", "full", "--flavor", "container.small", "--wait", timeout=600)
    backup = plat.json("db", "backup", "create", "full", "--name", "full-1", "--wait")
    assert backup["status"] == "COMPLETED", backup
    admin = StoreAdmin(Settings(home=plat.home, store_port=int(STORE_PORT)))
    bucket = f"onep-db-{db['id']}"
    admin._shell(f"s3.bucket.quota -name {bucket} -op set -sizeMB 1")
    try:
        yield db
    finally:
        admin._shell(f"s3.bucket.quota -name {bucket} -op remove")


def test_a_platform_killed_mid_backup_ends_it_completed(
    plat: Platform, big: dict[str, Any]
) -> None:
    plat.json("db", "backup", "create", "big", "--name", "big-1")
    deadline = time.monotonic() + 120
    while plat.json("db", "backup", "show", "big-1")["status"] != "BUILDING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    plat.kill()  # the agent's job goes on; the store too (a session of its own)
    os.kill(_store_pid(plat), 0)  # still running while the platform is down
    plat.start()
    deadline = time.monotonic() + 600
    while (shown := plat.json("db", "backup", "show", "big-1"))["status"] in ("NEW", "BUILDING"):
        assert time.monotonic() < deadline, shown
        time.sleep(1)
    assert shown["status"] == "COMPLETED", shown
    assert shown["size_bytes"] > 40_000_000


def test_an_unreachable_store_fails_the_backup_clearly(plat: Platform, big: dict[str, Any]) -> None:
    pid = _store_pid(plat)
    os.killpg(pid, signal.SIGSTOP)  # frozen: connections open but nothing answers
    try:
        out = plat.run(
            "db",
            "backup",
            "create",
            "big",
            "--name",
            "big-frozen",
            "--wait",
            check=False,
            timeout=900,
        )
    finally:
        os.killpg(pid, signal.SIGCONT)
    assert out.returncode != 0
    failed = plat.json("db", "backup", "show", "big-frozen")
    assert failed["status"] == "FAILED" and "backup failed" in failed["status_message"], failed
    # the earlier backup is intact: it restores
    plat.run(
        "db",
        "create",
        "from-1",
        "--restore",
        "big-1",
        "--flavor",
        "container.small",
        "--size-gb",
        "2",
        "--wait",
        timeout=900,
    )
    with _alice(plat, "from-1") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (600_000,)
    plat.run("db", "delete", "from-1", "--wait")


def test_a_full_store_fails_the_backup_clearly(plat: Platform, full: dict[str, Any]) -> None:
    deadline = time.monotonic() + 300  # the quota was set at the module's start
    while True:
        out = plat.run(  # incrementals: each try writes little, and quickly
            "db", "backup", "create", "full", "--type", "incr", "--wait",
            check=False, timeout=900,
        )  # fmt: skip
        if out.returncode != 0:
            break
        assert time.monotonic() < deadline, "the quota never made the store refuse"
    listed = plat.json("db", "backup", "list", "--database", "full")
    failed = [b for b in listed if b["status"] == "FAILED"]
    assert failed and "backup failed" in failed[-1]["status_message"], failed
    assert plat.json("db", "backup", "show", "full-1")["status"] == "COMPLETED"
