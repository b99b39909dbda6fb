"""Redis for real, on the host: the guest engine (config, ACL file, start, readiness,
snapshots into the embedded store, a restore's first start) runs Debian's Redis 7.0 in a
throwaway directory, and the platform's datastore manages its ACL users, as it does a
guest's."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from oneplatform.config import Settings
from oneplatform.dbaas.datastores.redis import Redis
from oneplatform.errors import AlreadyExists, InvalidInput, NotFound
from oneplatform.guest.bundle import (
    RestoreSettings,
    StoreSettings,
)
from oneplatform.guest.engines.redis import RedisEngine
from oneplatform.guest.processes import EngineError
from oneplatform.hostsvc.objectstore import StoreAdmin
from tests.integration import engines
from tests.integration.conftest import require_or_fail

pytestmark = pytest.mark.integration

ROOT = Path("/var/lib/oneplatform/redistest")  # the server's user must reach it (not /tmp/..)
DS = Redis()
Server = engines.Server[RedisEngine]


def client(srv: Server, user: str, password: str) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=srv.port, username=user, password=password,
        socket_timeout=10, decode_responses=True,
    )  # fmt: skip


@contextmanager
def _serving(
    backup: StoreSettings | None = None, restore: RestoreSettings | None = None
) -> Iterator[Server]:
    require_or_fail(shutil.which("redis-server"), "Redis is not installed (scripts/setup.sh)")
    with engines.serving(RedisEngine, DS, ROOT, "redis", backup, restore) as srv:
        yield srv


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with _serving() as srv:
        yield srv


def test_the_engine_runs_with_the_flavor_sizing_and_nobody_without_a_password(
    server: Server,
) -> None:
    admin = client(server, "admin", server.admin_password)
    admin.set("k", "v")
    assert admin.get("k") == "v"
    with pytest.raises(redis.exceptions.NoPermissionError):  # the server's own commands
        admin.config_get("maxmemory")
    platform = client(server, "onep_platform", server.platform.password)
    assert platform.config_get("maxmemory") == {"maxmemory": str(256 * 1024 * 1024)}
    assert platform.config_get("appendonly") == {"appendonly": "yes"}
    with pytest.raises(redis.exceptions.AuthenticationError):  # default is off
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(server, "admin", "not-the-password").ping()
    DS.ping(server.platform)


def test_users_are_acl_users_and_databases_are_refused(server: Server) -> None:
    conn = server.platform
    DS.create_user(conn, "alice", "Alice-pass-1")
    with pytest.raises(AlreadyExists):
        DS.create_user(conn, "alice", "Alice-pass-2")
    alice = client(server, "alice", "Alice-pass-1")
    alice.set("cart:1", "3 apples")
    assert alice.get("cart:1") == "3 apples"
    with pytest.raises(redis.exceptions.NoPermissionError):
        alice.execute_command("ACL", "LIST")
    assert [u.name for u in DS.list_users(conn)] == ["alice"]
    DS.set_password(conn, "alice", "Alice-pass-2")
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(server, "alice", "Alice-pass-1").ping()
    client(server, "alice", "Alice-pass-2").ping()
    DS.delete_user(conn, "alice")
    with pytest.raises(NotFound):
        DS.delete_user(conn, "alice")
    assert DS.list_users(conn) == []
    for bad in ("default", "admin", "a b", "x>y", "~*"):
        with pytest.raises(InvalidInput):
            DS.create_user(conn, bad, "Some-pass-123")
    with pytest.raises(InvalidInput, match="no databases"):
        DS.create_database(conn, "appdb")


def test_a_restart_keeps_the_data_and_the_users(server: Server) -> None:
    conn = server.platform
    DS.create_user(conn, "bob", "Bob-pass-123")
    client(server, "bob", "Bob-pass-123").set("kept", "yes")  # in the AOF, fsync'd each second
    time.sleep(1.2)
    engines.restart(server)
    assert client(server, "bob", "Bob-pass-123").get("kept") == "yes"


# -- backups: the snapshot and the users into the embedded store, restored elsewhere ---------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with engines.backup_store(tmp_path_factory, "redis-store") as settings:
        yield settings


def test_a_snapshot_restores_with_its_users_and_appends_again(store: Settings) -> None:
    admin = StoreAdmin(store)
    bucket = f"onep-db-{uuid.uuid4().hex[:8]}"
    admin.create_repository(bucket, "ONREDIS1", "redis-secret-0123456789")
    admin.add_reader(bucket, f"r-{bucket}", "ONREDISR", "redis-reader-0123456789")
    with _serving(
        backup=engines.repository(store, bucket, "ONREDIS1", "redis-secret-0123456789")
    ) as src:
        DS.create_user(src.platform, "carol", "Carol-pass-1")
        carol = client(src, "carol", "Carol-pass-1")
        carol.mset({f"key:{i}": f"value-{i}" for i in range(1000)})
        assert src.engine.start_backup("diff")[0] == 400
        snap = engines.take_backup(src.engine, "full", timeout=120)
        carol.set("after", "not in the snapshot")
    assert snap["type"] == "full" and snap["label"].endswith("F")
    assert snap["info"]["size"] > 0 and snap["info"]["repository"]["delta"] > 0
    reader = engines.repository(store, bucket, "ONREDISR", "redis-reader-0123456789")
    restore = RestoreSettings(store=reader, backup_set=snap["label"])
    with _serving(restore=restore) as copy:
        carol = client(copy, "carol", "Carol-pass-1")  # the source's user and password
        assert carol.dbsize() == 1000 and carol.get("key:7") == "value-7"
        assert carol.get("after") is None
        client(copy, "admin", copy.admin_password).ping()  # the copy's own admin
        platform = client(copy, "onep_platform", copy.platform.password)
        assert platform.config_get("appendonly") == {"appendonly": "yes"}  # on again
        carol.set("new", "appended")
        time.sleep(1.2)
        engines.restart(copy)  # from the AOF now
        assert carol.get("new") == "appended" and carol.dbsize() == 1001
    missing = RestoreSettings(store=reader, backup_set="20000101-000000F")
    with pytest.raises(EngineError, match="not in the source"), _serving(restore=missing):
        pass
    admin.delete_repository(bucket)
