"""MariaDB for real, on the host: the guest engine (install-db, option file, start,
readiness, users) runs Debian's MariaDB 10.11 in a throwaway directory, and the platform's
datastore does its SQL-level work against it, as it does against a guest's."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import pytest

from oneplatform.config import Settings
from oneplatform.dbaas.datastores.mariadb import MariaDB
from oneplatform.errors import AlreadyExists, BackendError, InvalidInput, NotFound
from oneplatform.guest.bundle import (
    RestoreSettings,
    StoreSettings,
)
from oneplatform.guest.engines.mariadb import MariaDbEngine
from oneplatform.guest.processes import EngineError
from oneplatform.hostsvc.objectstore import (
    FileRepositoryTool,
    StoreAdmin,
    store_config,
)
from tests.integration import engines
from tests.integration.conftest import require_or_fail

pytestmark = pytest.mark.integration

ROOT = Path("/var/lib/oneplatform/mariadbtest")  # the server's user must reach it (not /tmp/..)
DS = MariaDB()
Server = engines.Server[MariaDbEngine]


def connect(srv: Server, user: str, password: str, database: str | None = None) -> Any:
    return pymysql.connect(
        host="127.0.0.1", port=srv.port, user=user, password=password,
        database=database, connect_timeout=5, autocommit=True,
    )  # fmt: skip


@contextmanager
def _serving(
    backup: StoreSettings | None = None, restore: RestoreSettings | None = None
) -> Iterator[Server]:
    require_or_fail(shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists(),
                    "MariaDB is not installed (scripts/setup.sh installs it)")  # fmt: skip
    with engines.serving(MariaDbEngine, DS, ROOT, "mysql", backup, restore) as srv:
        yield srv


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with _serving() as srv:
        yield srv


def test_the_engine_runs_with_the_flavor_sizing_and_the_bundle_users(server: Server) -> None:
    assert not (server.engine.data_dir / server.engine.PENDING_NAME).exists()  # bootstrapped
    with connect(server, "admin", server.admin_password) as c, c.cursor() as cur:
        cur.execute("SELECT @@innodb_buffer_pool_size, @@log_bin, @@local_infile")
        assert cur.fetchone() == (256 * 1024 * 1024, 1, 0)  # 512 MB / 2
    with pytest.raises(pymysql.err.OperationalError):  # root only through the local socket
        connect(server, "root", "")
    DS.ping(server.platform)


def test_databases_users_and_grants_behave_as_mariadb(server: Server) -> None:
    conn = server.platform
    DS.create_database(conn, "appdb")
    with pytest.raises(AlreadyExists):
        DS.create_database(conn, "appdb")
    DS.create_user(conn, "alice", "Alice-pass-1")
    DS.grant(conn, "alice", "appdb")
    with connect(server, "alice", "Alice-pass-1", "appdb") as c, c.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
        cur.execute("INSERT INTO t VALUES (7)")
    assert {u.name: u.databases for u in DS.list_users(conn)} == {"alice": ("appdb",)}
    assert "appdb" in DS.list_databases(conn) and "mysql" not in DS.list_databases(conn)
    # The admin owns what the platform made; it reads no system table.
    with connect(server, "admin", server.admin_password, "appdb") as c, c.cursor() as cur:
        cur.execute("SELECT x FROM t")
        assert cur.fetchone() == (7,)
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT authentication_string FROM mysql.user")
    DS.revoke(conn, "alice", "appdb")
    with pytest.raises(pymysql.err.OperationalError):
        connect(server, "alice", "Alice-pass-1", "appdb")
    DS.set_password(conn, "alice", "Alice-pass-2")
    connect(server, "alice", "Alice-pass-2").close()
    DS.delete_user(conn, "alice")
    with pytest.raises(NotFound):
        DS.delete_user(conn, "alice")


def test_a_grant_is_on_exactly_one_database(server: Server) -> None:
    """In a GRANT '_' matches any character: the grant on app_db must not open appxdb."""
    conn = server.platform
    for name in ("app_db", "appxdb"):
        DS.create_database(conn, name)
    DS.create_user(conn, "bob", "Bob-pass-123")
    DS.grant(conn, "bob", "app_db")
    connect(server, "bob", "Bob-pass-123", "app_db").close()
    with pytest.raises(pymysql.err.OperationalError):
        connect(server, "bob", "Bob-pass-123", "appxdb")
    assert {u.name: u.databases for u in DS.list_users(conn)}["bob"] == ("app_db",)
    # A database deleted and made again does not open to the users of the old one.
    DS.delete_database(conn, "app_db")
    DS.create_database(conn, "app_db")
    with pytest.raises(pymysql.err.OperationalError):
        connect(server, "bob", "Bob-pass-123", "app_db")


@pytest.mark.parametrize(
    "name", ["x`; DROP DATABASE appdb; --", "Robert'); DROP", "mysql", "a b", "sys"]
)
def test_hostile_names_are_refused_and_change_nothing(server: Server, name: str) -> None:
    conn = server.platform
    before = (DS.list_databases(conn), [u.name for u in DS.list_users(conn)])
    with pytest.raises(InvalidInput):
        DS.create_database(conn, name)
    with pytest.raises(InvalidInput):
        DS.create_user(conn, name, "Some-pass-123")
    assert (DS.list_databases(conn), [u.name for u in DS.list_users(conn)]) == before


def test_a_restart_keeps_the_data(server: Server) -> None:
    conn = server.platform
    DS.create_database(conn, "keep")
    with connect(server, "onep_platform", conn.password, "keep") as c, c.cursor() as cur:
        cur.execute("CREATE TABLE k (v varchar(10))")
        cur.execute("INSERT INTO k VALUES ('kept')")
    engines.restart(server)  # a clean shutdown; nothing pending at the bootstrap
    with connect(server, "onep_platform", conn.password, "keep") as c, c.cursor() as cur:
        cur.execute("SELECT v FROM k")
        assert cur.fetchone() == ("kept",)


# -- backups: mariadb-backup into the embedded store, restored into a server of its own ------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    require_or_fail(shutil.which("mariadb-backup"), "mariadb-backup is not installed (setup.sh)")
    with engines.backup_store(tmp_path_factory, "mariadb-store") as settings:
        yield settings


def _rows(srv: Server, user: str, password: str) -> list[int]:
    with connect(srv, user, password, "shop") as c, c.cursor() as cur:
        cur.execute("SELECT id FROM orders ORDER BY id")
        return [int(r[0]) for r in cur.fetchall()]


def test_full_and_incremental_backups_restore_with_their_users(store: Settings) -> None:
    """A full, rows, an incremental, more rows: each backup restores into a server of its
    own with exactly the rows it held, the tenant's user and password with them, and the
    new server's own admin credentials; a reader's keys are enough to restore."""
    admin = StoreAdmin(store)
    bucket, access, secret = (
        f"onep-db-{uuid.uuid4().hex[:8]}",
        "ONMARIA1",
        "maria-secret-0123456789",
    )
    admin.create_repository(bucket, access, secret)
    admin.add_reader(bucket, f"r-{bucket}", "ONMARIAR", "maria-reader-0123456789")
    with _serving(backup=engines.repository(store, bucket, access, secret)) as src:
        DS.create_database(src.platform, "shop")
        DS.create_user(src.platform, "alice", "Alice-pass-1")
        DS.grant(src.platform, "alice", "shop")
        with connect(src, "alice", "Alice-pass-1", "shop") as c, c.cursor() as cur:
            cur.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            cur.execute("INSERT INTO orders VALUES (1, 'in the full')")
        full = engines.take_backup(src.engine, "full")
        with connect(src, "alice", "Alice-pass-1", "shop") as c, c.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES (2, 'in the incremental')")
        incr = engines.take_backup(src.engine, "incr")
        with connect(src, "alice", "Alice-pass-1", "shop") as c, c.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES (3, 'in no backup')")
    assert (full["type"], incr["type"], incr["prior"]) == ("full", "incr", full["label"])
    assert incr["lsn"]["from"] == full["lsn"]["to"] and incr["lsn"]["last"] > full["lsn"]["last"]
    assert full["info"]["size"] > full["info"]["repository"]["delta"] > 0  # compressed
    assert full["binlog"]["gtid"], full
    # what the repository holds is encrypted (crypt names it .bin): the manifest's own text
    # is not in it
    ca = store.home / "store-ca.pem"
    ca.write_text(store_config(store).ca_pem)
    raw = subprocess.run(
        ["rclone", "--config=/dev/null", "--ca-cert", str(ca), "cat",
         f":s3,provider=Other,access_key_id={access},secret_access_key={secret},"
         f"endpoint='https://localhost:{engines.STORE_PORT}':{bucket}/repo/{full['label']}/backup.json.bin"],
        capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"},  # no AWS_CA_BUNDLE
    )  # fmt: skip
    assert raw.returncode == 0 and raw.stdout, raw.stderr
    assert full["label"].encode() not in raw.stdout
    reader = engines.repository(store, bucket, "ONMARIAR", "maria-reader-0123456789")
    for backup, rows in ((incr, [1, 2]), (full, [1])):
        restore = RestoreSettings(store=reader, backup_set=backup["label"])
        with _serving(restore=restore) as copy:
            assert _rows(copy, "alice", "Alice-pass-1") == rows
            connect(copy, "admin", copy.admin_password, "shop").close()  # its own admin
            DS.ping(copy.platform)
    missing = RestoreSettings(store=reader, backup_set="20000101-000000F")
    with pytest.raises(EngineError, match="not in the source"), _serving(restore=missing):
        pass
    # the host's tool: a backup expired takes those built on it; the repository goes whole
    tool = FileRepositoryTool(store, bucket, access, secret, engines.CIPHER)
    assert [m["label"] for m in tool.manifests()] == [full["label"], incr["label"]]
    second = _backup_again(store, bucket, access, secret, reader, incr)
    # Other data files (a new server; a replica made primary): no incremental on that chain
    with _serving(backup=engines.repository(store, bucket, access, secret)) as other:
        fresh = engines.take_backup(other.engine, "incr")
    assert (fresh["type"], fresh["prior"]) == ("full", None), fresh
    tool.expire(incr["label"], in_flight=0)
    assert [m["label"] for m in tool.manifests()] == [full["label"], fresh["label"]], second
    tool.expire(full["label"], in_flight=0)
    tool.expire(fresh["label"], in_flight=0)
    assert tool.manifests() == []
    tool.destroy()
    with pytest.raises(BackendError):
        tool.manifests()


def _backup_again(
    store: Settings,
    bucket: str,
    access: str,
    secret: str,
    reader: StoreSettings,
    after: dict[str, Any],
) -> str:
    """A server restored from ``after`` takes an incremental into the source's repository:
    it builds on ``after`` (the newest), so expiring ``after`` takes it too."""
    restore = RestoreSettings(store=reader, backup_set=after["label"])
    with _serving(backup=engines.repository(store, bucket, access, secret), restore=restore) as srv:
        made = engines.take_backup(srv.engine, "incr")
    assert made["prior"] == after["label"], made
    return str(made["label"])
