"""MariaDB for real, on the host: the guest engine (install-db, option file, start,
readiness, users) runs Debian's MariaDB 10.11 in a throwaway directory, and the platform's
datastore does its SQL-level work against it, as it does against a guest's."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

from oneplatform.dbaas.datastores.base import ConnInfo
from oneplatform.dbaas.datastores.mariadb import MariaDB
from oneplatform.errors import AlreadyExists, InvalidInput, NotFound
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    generate_password,
    generate_secret,
)
from oneplatform.guest.engines.mariadb import MariaDbEngine
from oneplatform.guest.processes import ChildProcesses
from tests.integration.conftest import find_free_port, require_or_fail

pytestmark = pytest.mark.integration

ROOT = Path("/var/lib/oneplatform/mariadbtest")  # the server's user must reach it (not /tmp/..)
DS = MariaDB()


@dataclass
class Server:
    engine: MariaDbEngine
    proc: subprocess.Popen[bytes]
    port: int
    platform: ConnInfo
    admin_password: str

    def connect(self, user: str, password: str, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user=user, password=password,
            database=database, connect_timeout=5, autocommit=True,
        )  # fmt: skip


def _ready(engine: MariaDbEngine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok, detail = engine.health()
        if ok:
            return
        assert time.monotonic() < deadline, detail
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    require_or_fail(shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists(),
                    "MariaDB is not installed (scripts/setup.sh installs it)")  # fmt: skip
    home = ROOT / uuid.uuid4().hex[:12]
    home.mkdir(parents=True, mode=0o755)
    port = find_free_port()
    admin_pw, platform_pw = generate_password(), generate_password()
    bundle = Bundle(
        instance_id=uuid.uuid4().hex,
        datastore="mariadb",
        version="10.11",
        agent=AgentSettings(secret=generate_secret(), port=find_free_port()),
        engine=EngineSettings(port=port, settings=DS.engine_settings(1, 512)),
        admin=AdminCredentials("admin", admin_pw),
        platform=AdminCredentials("onep_platform", platform_pw),
    )
    engine = MariaDbEngine(
        bundle, ChildProcesses(), data_dir=home / "mysql", socket_dir=home / "run",
        bind_address="127.0.0.1",
    )  # fmt: skip
    engine.initialize()
    engine.configure()
    srv = Server(
        engine, engine.start(), port,
        ConnInfo("127.0.0.1", port, "onep_platform", platform_pw, act_as="admin"),
        admin_pw,
    )  # fmt: skip
    try:
        _ready(engine)
        engine.bootstrap()
        yield srv
    finally:
        engine.stop(srv.proc, 30)
        shutil.rmtree(home, ignore_errors=True)


def test_the_engine_runs_with_the_flavor_sizing_and_the_bundle_users(server: Server) -> None:
    assert not (server.engine.data_dir / server.engine.PENDING_NAME).exists()  # bootstrapped
    with server.connect("admin", server.admin_password) as c, c.cursor() as cur:
        cur.execute("SELECT @@innodb_buffer_pool_size, @@log_bin, @@local_infile")
        assert cur.fetchone() == (256 * 1024 * 1024, 1, 0)  # 512 MB / 2
    with pytest.raises(pymysql.err.OperationalError):  # root only through the local socket
        server.connect("root", "")
    DS.ping(server.platform)


def test_databases_users_and_grants_behave_as_mariadb(server: Server) -> None:
    conn = server.platform
    DS.create_database(conn, "appdb")
    with pytest.raises(AlreadyExists):
        DS.create_database(conn, "appdb")
    DS.create_user(conn, "alice", "Alice-pass-1")
    DS.grant(conn, "alice", "appdb")
    with server.connect("alice", "Alice-pass-1", "appdb") as c, c.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
        cur.execute("INSERT INTO t VALUES (7)")
    assert {u.name: u.databases for u in DS.list_users(conn)} == {"alice": ("appdb",)}
    assert "appdb" in DS.list_databases(conn) and "mysql" not in DS.list_databases(conn)
    # The admin owns what the platform made; it reads no system table.
    with server.connect("admin", server.admin_password, "appdb") as c, c.cursor() as cur:
        cur.execute("SELECT x FROM t")
        assert cur.fetchone() == (7,)
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT authentication_string FROM mysql.user")
    DS.revoke(conn, "alice", "appdb")
    with pytest.raises(pymysql.err.OperationalError):
        server.connect("alice", "Alice-pass-1", "appdb")
    DS.set_password(conn, "alice", "Alice-pass-2")
    server.connect("alice", "Alice-pass-2").close()
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
    server.connect("bob", "Bob-pass-123", "app_db").close()
    with pytest.raises(pymysql.err.OperationalError):
        server.connect("bob", "Bob-pass-123", "appxdb")
    assert {u.name: u.databases for u in DS.list_users(conn)}["bob"] == ("app_db",)
    # A database deleted and made again does not open to the users of the old one.
    DS.delete_database(conn, "app_db")
    DS.create_database(conn, "app_db")
    with pytest.raises(pymysql.err.OperationalError):
        server.connect("bob", "Bob-pass-123", "app_db")


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
    with server.connect("onep_platform", conn.password, "keep") as c, c.cursor() as cur:
        cur.execute("CREATE TABLE k (v varchar(10))")
        cur.execute("INSERT INTO k VALUES ('kept')")
    assert server.engine.stop(server.proc, 30) == 0  # a clean shutdown
    server.engine.initialize()  # finds its data: nothing made again
    server.engine.configure()
    server.proc = server.engine.start()
    _ready(server.engine)
    server.engine.bootstrap()  # nothing pending
    with server.connect("onep_platform", conn.password, "keep") as c, c.cursor() as cur:
        cur.execute("SELECT v FROM k")
        assert cur.fetchone() == ("kept",)
