"""Redis for real, on the host: the guest engine (config, ACL file, start, readiness,
snapshots into the embedded store, a restore's first start) runs Debian's Redis 7.0 in a
throwaway directory, and the platform's datastore manages its ACL users, as it does a
guest's."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from oneplatform.config import Settings
from oneplatform.dbaas.datastores.base import ConnInfo
from oneplatform.dbaas.datastores.redis import Redis
from oneplatform.errors import AlreadyExists, InvalidInput, NotFound
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    RestoreSettings,
    StoreSettings,
    generate_password,
    generate_secret,
)
from oneplatform.guest.engines.redis import RedisEngine
from oneplatform.guest.processes import ChildProcesses, EngineError
from oneplatform.hostsvc.objectstore import StoreAdmin, embedded_store, store_config
from tests.integration.conftest import find_free_port, require_or_fail

pytestmark = pytest.mark.integration

ROOT = Path("/var/lib/oneplatform/redistest")  # the server's user must reach it (not /tmp/..)
DS = Redis()
STORE_PORT = 8339  # the benchmark's store port: the tests' platforms use 8331-8338


@dataclass
class Server:
    engine: RedisEngine
    proc: subprocess.Popen[bytes]
    port: int
    platform: ConnInfo
    admin_password: str

    def client(self, user: str, password: str) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, username=user, password=password,
            socket_timeout=10, decode_responses=True,
        )  # fmt: skip


def _ready(engine: RedisEngine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok, detail = engine.health()
        if ok:
            return
        assert time.monotonic() < deadline, detail
        time.sleep(0.2)


@contextmanager
def _serving(
    backup: StoreSettings | None = None, restore: RestoreSettings | None = None
) -> Iterator[Server]:
    """A server of its own (a restore's first start included), stopped and removed after."""
    require_or_fail(shutil.which("redis-server"), "Redis is not installed (scripts/setup.sh)")
    home = ROOT / uuid.uuid4().hex[:12]
    home.mkdir(parents=True, mode=0o755)
    port = find_free_port()
    bundle = Bundle(
        instance_id=uuid.uuid4().hex,
        datastore="redis",
        version="7.0",
        agent=AgentSettings(secret=generate_secret(), port=find_free_port()),
        engine=EngineSettings(port=port, settings=DS.engine_settings(1, 512)),
        admin=AdminCredentials("admin", generate_password()),
        platform=AdminCredentials("onep_platform", generate_password()),
        backup=backup,
        restore=restore,
    )
    engine = RedisEngine(
        bundle, ChildProcesses(), data_dir=home / "redis", socket_dir=home / "run",
        bind_address="127.0.0.1", backup_conf_dir=home / "backup-conf",
        map_store_host=lambda store: None,  # the store is at localhost, which its CA names
    )  # fmt: skip
    assert bundle.platform is not None
    engine.initialize()
    engine.configure()
    srv = Server(
        engine, engine.start(), port,
        ConnInfo("127.0.0.1", port, "onep_platform", bundle.platform.password, act_as="admin"),
        bundle.admin.password,
    )  # fmt: skip
    try:
        _ready(engine)
        engine.bootstrap()
        yield srv
    finally:
        engine.stop(srv.proc, 30)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with _serving() as srv:
        yield srv


def test_the_engine_runs_with_the_flavor_sizing_and_nobody_without_a_password(
    server: Server,
) -> None:
    admin = server.client("admin", server.admin_password)
    admin.set("k", "v")
    assert admin.get("k") == "v"
    with pytest.raises(redis.exceptions.NoPermissionError):  # the server's own commands
        admin.config_get("maxmemory")
    platform = server.client("onep_platform", server.platform.password)
    assert platform.config_get("maxmemory") == {"maxmemory": str(256 * 1024 * 1024)}
    assert platform.config_get("appendonly") == {"appendonly": "yes"}
    with pytest.raises(redis.exceptions.AuthenticationError):  # default is off
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        server.client("admin", "not-the-password").ping()
    DS.ping(server.platform)


def test_users_are_acl_users_and_databases_are_refused(server: Server) -> None:
    conn = server.platform
    DS.create_user(conn, "alice", "Alice-pass-1")
    with pytest.raises(AlreadyExists):
        DS.create_user(conn, "alice", "Alice-pass-2")
    alice = server.client("alice", "Alice-pass-1")
    alice.set("cart:1", "3 apples")
    assert alice.get("cart:1") == "3 apples"
    with pytest.raises(redis.exceptions.NoPermissionError):
        alice.execute_command("ACL", "LIST")
    assert [u.name for u in DS.list_users(conn)] == ["alice"]
    DS.set_password(conn, "alice", "Alice-pass-2")
    with pytest.raises(redis.exceptions.AuthenticationError):
        server.client("alice", "Alice-pass-1").ping()
    server.client("alice", "Alice-pass-2").ping()
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
    server.client("bob", "Bob-pass-123").set("kept", "yes")  # in the AOF, fsync'd each second
    time.sleep(1.2)
    assert server.engine.stop(server.proc, 30) == 0
    server.engine.initialize()  # finds its data: nothing made again
    server.engine.configure()
    server.proc = server.engine.start()
    _ready(server.engine)
    server.engine.bootstrap()
    assert server.client("bob", "Bob-pass-123").get("kept") == "yes"


# -- backups: the snapshot and the users into the embedded store, restored elsewhere ---------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    require_or_fail(shutil.which("rclone"), "rclone is not installed (scripts/setup.sh)")
    settings = Settings(home=tmp_path_factory.mktemp("redis-store"), store_port=STORE_PORT)
    service = embedded_store(settings)
    service.start()
    assert service.wait_ready(60), service.detail
    yield settings
    service.stop()


def _repository(settings: Settings, bucket: str, access: str, secret: str) -> StoreSettings:
    return StoreSettings(
        host="localhost", address="127.0.0.1", port=STORE_PORT, bucket=bucket,
        access_key=access, secret_key=secret, ca_pem=store_config(settings).ca_pem,
        cipher_pass="the-repositorys-own-passphrase",
    )  # fmt: skip


def _backup(srv: Server) -> dict[str, Any]:
    status, answer = srv.engine.start_backup("full")
    assert status == 200, answer
    deadline = time.monotonic() + 120
    while (job := srv.engine.backup_job()) and job["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job is not None and job["state"] == "succeeded", job
    return dict(job["backup"])


def test_a_snapshot_restores_with_its_users_and_appends_again(store: Settings) -> None:
    admin = StoreAdmin(store)
    bucket = f"onep-db-{uuid.uuid4().hex[:8]}"
    admin.create_repository(bucket, "ONREDIS1", "redis-secret-0123456789")
    admin.add_reader(bucket, f"r-{bucket}", "ONREDISR", "redis-reader-0123456789")
    with _serving(backup=_repository(store, bucket, "ONREDIS1", "redis-secret-0123456789")) as src:
        DS.create_user(src.platform, "carol", "Carol-pass-1")
        carol = src.client("carol", "Carol-pass-1")
        carol.mset({f"key:{i}": f"value-{i}" for i in range(1000)})
        assert src.engine.start_backup("diff")[0] == 400
        snap = _backup(src)
        carol.set("after", "not in the snapshot")
    assert snap["type"] == "full" and snap["label"].endswith("F")
    assert snap["info"]["size"] > 0 and snap["info"]["repository"]["delta"] > 0
    reader = _repository(store, bucket, "ONREDISR", "redis-reader-0123456789")
    restore = RestoreSettings(store=reader, backup_set=snap["label"])
    with _serving(restore=restore) as copy:
        carol = copy.client("carol", "Carol-pass-1")  # the source's user and password
        assert carol.dbsize() == 1000 and carol.get("key:7") == "value-7"
        assert carol.get("after") is None
        copy.client("admin", copy.admin_password).ping()  # the copy's own admin
        platform = copy.client("onep_platform", copy.platform.password)
        assert platform.config_get("appendonly") == {"appendonly": "yes"}  # on again
        carol.set("new", "appended")
        time.sleep(1.2)
        assert copy.engine.stop(copy.proc, 30) == 0  # from the AOF now
        copy.engine.initialize()
        copy.engine.configure()
        copy.proc = copy.engine.start()
        _ready(copy.engine)
        copy.engine.bootstrap()
        assert carol.get("new") == "appended" and carol.dbsize() == 1001
    missing = RestoreSettings(store=reader, backup_set="20000101-000000F")
    with pytest.raises(EngineError, match="not in the source"), _serving(restore=missing):
        pass
    admin.delete_repository(bucket)
