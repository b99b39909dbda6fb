"""MariaDB and Redis as a service end to end: `onep db` against the real Podman, libvirt and
the real MariaDB 10.11 and Redis 7.0 images, each used with its engine's own client; a
MariaDB backup restores onto a VM (whose disk then grows online), a Redis snapshot too; each
takes a configuration group; each gets a replica through the replication hub, and a
switchover and a move under a writer keep every acknowledged write.
One platform for both (their images build at its start, side by side). Both on bare metal:
test_three_compute_types (the lab's)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.clients import mariadb, redis
from tests.e2e.conftest import ONEP, Platform, member_container, own_platform
from tests.e2e.writer import MariaDbWriter, RedisWriter, Writer, under_writer

pytestmark = pytest.mark.e2e
ALICE_PW = "Alice-maria-7f2"
GIB = 1024**3
IMAGES = "mariadb-10.11,redis-7.0"


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with own_platform(tmp_path_factory, "onep-engines", ONEP_IMAGES=IMAGES) as p:
        yield p


@pytest.fixture(scope="module")
def mdb(plat: Platform) -> Iterator[dict[str, Any]]:
    db = plat.json(
        "db", "create", "m1", "--datastore", "mariadb", "--version", "10.11",
        "--flavor", "container.small", "--database", "appdb", "--user", f"alice:{ALICE_PW}",
        "--wait", timeout=900,
    )  # fmt: skip
    yield db
    plat.run("db", "delete", "m1", "--wait", check=False)


def test_a_mariadb_database_serves_its_users_with_the_engines_own_client(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    assert (mdb["status"], mdb["health"]) == ("ACTIVE", "HEALTHY")
    assert (mdb["datastore"], mdb["version"], mdb["compute_type"]) == (
        "mariadb",
        "10.11",
        "container",
    )
    assert mdb["connection_uri"].startswith("mysql://admin@")
    mariadb(mdb, "alice", ALICE_PW, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)", "appdb")
    assert mariadb(mdb, "alice", ALICE_PW, "SELECT x FROM t", "appdb") == "7"
    # sized from the flavor: half its RAM is the buffer pool
    ram_mb = next(f["ram_mb"] for f in plat.json("flavor", "list") if f["name"] == mdb["flavor"])
    admin = plat.json("db", "credentials", "m1")
    pool = mariadb(mdb, "admin", admin["password"], "SELECT @@innodb_buffer_pool_size")
    assert int(pool) == ram_mb // 2 * 1024 * 1024
    # `onep db connect` opens the mariadb client as the admin
    out = plat.run(
        "db", "connect", "m1", "--database", "appdb", "--", "-N", "-e", "SELECT x FROM t"
    )
    assert out.stdout.strip() == "7"
    # the engine's own log, through the agent
    logged = plat.run("db", "logs", "m1", "--tail", "500").stdout
    assert "ready for connections" in logged, logged[-2000:]
    _engine_metrics_are_real(plat, "m1")


def _engine_metrics_are_real(plat: Platform, name: str) -> None:
    """/metrics shows what the engine itself counts (through its agent)."""
    m = plat.engine_metrics(name)
    assert m.get("onep_db_connections", -1) >= 0, m
    assert m["onep_db_transactions_total"] > 0 and m["onep_db_size_bytes"] > 0, m
    if "onep_db_cache_hit_ratio" in m:
        assert 0 <= m["onep_db_cache_hit_ratio"] <= 1, m


def test_users_and_grants_behave_as_mariadb(plat: Platform, mdb: dict[str, Any]) -> None:
    plat.run("db", "database", "create", "m1", "reports")
    bob = plat.json("db", "user", "create", "m1", "bob", "--database", "reports")
    mariadb(mdb, "bob", bob["password"], "CREATE TABLE r (y int)", "reports")
    with pytest.raises(AssertionError, match="denied"):
        mariadb(mdb, "bob", bob["password"], "SELECT * FROM t", "appdb")
    users = {u["name"]: u["databases"] for u in plat.json("db", "user", "list", "m1")}
    assert users == {"alice": ["appdb"], "bob": ["reports"]}
    plat.run("db", "user", "revoke", "m1", "bob", "reports")
    with pytest.raises(AssertionError, match="denied"):
        mariadb(mdb, "bob", bob["password"], "SELECT * FROM r", "reports")
    plat.run("db", "user", "delete", "m1", "bob")
    assert [u["name"] for u in plat.json("db", "user", "list", "m1")] == ["alice"]


def test_a_backup_chain_restores_onto_a_vm_with_its_data_and_users(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    """A full backup, a row, an incremental, a row: the incremental restored onto a VM holds
    the rows up to it and the tenant's user; its admin is its own."""
    plat.run("db", "backup", "create", "m1", "--name", "m1-full", "--wait", timeout=900)
    mariadb(mdb, "alice", ALICE_PW, "INSERT INTO t VALUES (8)", "appdb")
    incr = plat.json(
        "db", "backup", "create", "m1", "--name", "m1-incr", "--type", "incr", "--wait",
        timeout=900,
    )  # fmt: skip
    mariadb(mdb, "alice", ALICE_PW, "INSERT INTO t VALUES (9)", "appdb")  # in no backup
    full = plat.json("db", "backup", "show", "m1-full")
    assert (full["status"], incr["status"]) == ("COMPLETED", "COMPLETED"), (full, incr)
    assert (full["type"], incr["type"], incr["parent"]) == ("full", "incr", "m1-full")
    copy = plat.json(
        "db", "create", "m1-vm", "--restore", "m1-incr", "--flavor", "vm.small", "--wait",
        timeout=1800,
    )  # fmt: skip
    try:
        assert (copy["status"], copy["compute_type"], copy["datastore"]) == (
            "ACTIVE", "vm", "mariadb",
        )  # fmt: skip
        assert mariadb(copy, "alice", ALICE_PW, "SELECT x FROM t ORDER BY x", "appdb") == "7\n8"
        admin = plat.json("db", "credentials", "m1-vm")
        assert admin["password"] != plat.json("db", "credentials", "m1")["password"]
        assert mariadb(copy, "admin", admin["password"], "SELECT count(*) FROM t", "appdb") == "2"
        _a_vm_grows_its_disk_and_filesystem_online(plat, copy)
    finally:
        plat.run("db", "delete", "m1-vm", "--wait", check=False, timeout=900)


def _a_vm_grows_its_disk_and_filesystem_online(plat: Platform, copy: dict[str, Any]) -> None:
    """libvirt grows the data disk under the running guest, the agent grows its ext4 with
    resize2fs: the engine serves throughout, the rows written before are read after."""
    before = plat.guest_storage("m1-vm")
    size = int(copy["size_gb"])
    grown = plat.json("db", "resize", "m1-vm", "--size-gb", str(size + 2), "--wait", timeout=900)
    assert (grown["status"], grown["size_gb"], grown["health"]) == ("ACTIVE", size + 2, "HEALTHY")
    after = grown["storage"]  # what the guest's statvfs sees now
    assert after["total_bytes"] > before["total_bytes"] + 1.5 * GIB, (before, after)
    assert after["free_bytes"] > before["free_bytes"] + GIB, (before, after)
    assert mariadb(copy, "alice", ALICE_PW, "SELECT x FROM t ORDER BY x", "appdb") == "7\n8"
    mariadb(copy, "alice", ALICE_PW, "INSERT INTO t VALUES (10)", "appdb")
    refused = plat.run("db", "resize", "m1-vm", "--size-gb", str(size + 1), check=False)
    assert refused.returncode == 1 and "storage_cannot_shrink" in refused.stderr, refused.stderr


def test_mariadb_takes_a_group_live_and_its_read_only_variables_at_the_restart(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    def variable(name: str) -> str:
        admin = plat.json("db", "credentials", "m1")["password"]
        return mariadb(mdb, "admin", admin, f"SELECT @@GLOBAL.{name}")

    proc = plat.run(
        "db", "config", "create", "bad", "--datastore", "mariadb", "--set", "server_id=9",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "config_parameter_owned" in proc.stderr, proc.stderr
    group = plat.json(
        "db", "config", "create", "mtuned", "--datastore", "mariadb", "--version", "10.11",
        "--set", "max_connections=200", "--set", "back_log=123",
        "--set", "long_query_time=0.5",
    )  # fmt: skip
    assert group["values"]["max_connections"] == "200"
    before = variable("back_log")
    attached = plat.json("db", "config", "attach", "m1", "mtuned")
    assert attached["restart_required"] is True
    assert variable("max_connections") == "200"  # SET GLOBAL
    assert variable("long_query_time") == "0.500000"
    assert variable("back_log") == before  # read-only: at the restart
    plat.run("db", "restart", "m1", "--wait")
    assert plat.json("db", "show", "m1")["restart_required"] is False
    assert variable("back_log") == "123"
    assert variable("max_connections") == "200"  # the option file kept it
    detached = plat.json("db", "config", "detach", "m1")
    assert detached["configuration"] is None
    assert variable("max_connections") != "200"


def test_what_mariadb_cannot_do_yet_is_refused_with_the_reason(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    catalog = {d["name"]: d for d in plat.json("datastore", "list")}
    version = catalog["mariadb"]["versions"][0]
    caps = {c["name"]: c for c in version["capabilities"]}
    assert caps["backups"]["supported"] and version["backup_types"] == ["full", "incr"]
    assert all(caps[f]["supported"] for f in ("replicas", "switchover", "move", "failover"))
    assert not caps["pitr"]["supported"] and not caps["detach"]["supported"]
    refusals = {
        "pitr": ("db", "create", "m1-then", "--restore-from", "m1", "--to-time",
                 "2026-01-01T00:00:00Z", "--flavor", "container.small"),
    }  # fmt: skip
    for feature, argv in refusals.items():
        refused = plat.run(*argv, check=False)
        assert refused.returncode != 0 and "capability_not_supported" in refused.stderr, argv
        assert caps[feature]["reason"] in " ".join(refused.stderr.split())  # unwrapped
    diff = plat.run("db", "backup", "create", "m1", "--type", "diff", check=False)
    assert diff.returncode != 0 and "incr" in diff.stderr, diff.stderr


# -- Redis ------------------------------------------------------------------------------------
CAROL_PW = "Carol-redis-41a"


@pytest.fixture(scope="module")
def rdb(plat: Platform) -> Iterator[dict[str, Any]]:
    db = plat.json(
        "db", "create", "r1", "--datastore", "redis", "--version", "7.0",
        "--flavor", "container.small", "--user", f"carol:{CAROL_PW}", "--wait", timeout=900,
    )  # fmt: skip
    yield db
    plat.run("db", "delete", "r1", "--wait", check=False)


def test_a_redis_database_serves_acl_users_with_redis_cli(
    plat: Platform, rdb: dict[str, Any]
) -> None:
    assert (rdb["status"], rdb["health"], rdb["datastore"]) == ("ACTIVE", "HEALTHY", "redis")
    assert rdb["connection_uri"].startswith("redis://admin@")
    assert redis(rdb, "carol", CAROL_PW, "SET", "cart:1", "3 apples") == "OK"
    assert redis(rdb, "carol", CAROL_PW, "GET", "cart:1") == "3 apples"
    with pytest.raises(AssertionError, match="NOPERM"):  # the server's own commands
        redis(rdb, "carol", CAROL_PW, "CONFIG", "GET", "maxmemory")
    _engine_metrics_are_real(plat, "r1")
    with pytest.raises(AssertionError, match="WRONGPASS"):
        redis(rdb, "carol", "not-her-password", "PING")
    # users are ACL users; databases and grants are refused with the reason
    dave = plat.json("db", "user", "create", "r1", "dave")
    assert redis(rdb, "dave", dave["password"], "PING") == "PONG"
    assert [u["name"] for u in plat.json("db", "user", "list", "r1")] == ["carol", "dave"]
    plat.run("db", "user", "delete", "r1", "dave")
    with pytest.raises(AssertionError, match="WRONGPASS"):
        redis(rdb, "dave", dave["password"], "PING")
    refused = plat.run("db", "database", "create", "r1", "appdb", check=False)
    assert refused.returncode != 0 and "capability_not_supported" in refused.stderr
    assert "no databases" in " ".join(refused.stderr.split())
    # `onep db connect` opens redis-cli as the admin
    assert plat.run("db", "connect", "r1", "--", "GET", "cart:1").stdout.strip() == "3 apples"
    # the engine's log, followed: the lines there are, then what comes (a save it logs)
    follower = subprocess.Popen(
        [ONEP, "db", "logs", "r1", "--tail", "5", "--follow"],
        stdout=subprocess.PIPE, text=True, env=plat.env(),
    )  # fmt: skip
    time.sleep(2.0)
    plat.run("db", "backup", "create", "r1", "--name", "r1-logged", "--wait", timeout=900)
    time.sleep(2.5)
    follower.terminate()
    followed, _ = follower.communicate(timeout=30)
    assert "Background saving started" in followed, followed[-2000:]


def test_redis_takes_a_group_live(plat: Platform, rdb: dict[str, Any]) -> None:
    def info(section: str, key: str) -> str:
        out = redis(rdb, "carol", CAROL_PW, "INFO", section)
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith(key + ":"))  # fmt: skip

    assert info("memory", "maxmemory_policy") == "noeviction"
    plat.json(
        "db", "config", "create", "rtuned", "--datastore", "redis", "--version", "7.0",
        "--set", "maxmemory-policy=allkeys-lru", "--set", "hz=20", "--set", "maxmemory=100mb",
    )  # fmt: skip
    attached = plat.json("db", "config", "attach", "r1", "rtuned")
    assert (attached["configuration"], attached["restart_required"]) == ("rtuned", False)
    assert info("memory", "maxmemory_policy") == "allkeys-lru"  # CONFIG SET
    assert info("memory", "maxmemory") == str(100 * 1024 * 1024)
    assert info("server", "configured_hz") == "20"
    plat.run("db", "restart", "r1", "--wait")
    assert info("memory", "maxmemory_policy") == "allkeys-lru"  # redis.conf kept it
    plat.json("db", "config", "detach", "r1")
    assert info("memory", "maxmemory_policy") == "noeviction"  # the flavor's, at once


def test_a_redis_snapshot_restores_onto_a_vm_with_its_users(
    plat: Platform, rdb: dict[str, Any]
) -> None:
    redis(rdb, "carol", CAROL_PW, "SET", "stock", "42")
    snap = plat.json("db", "backup", "create", "r1", "--name", "r1-snap", "--wait", timeout=900)
    assert (snap["status"], snap["type"]) == ("COMPLETED", "full"), snap
    redis(rdb, "carol", CAROL_PW, "SET", "stock", "41")  # after the snapshot
    copy = plat.json(
        "db", "create", "r1-copy", "--restore", "r1-snap", "--flavor", "vm.small", "--wait",
        timeout=1800,
    )  # fmt: skip
    try:
        assert (copy["status"], copy["compute_type"], copy["datastore"]) == (
            "ACTIVE", "vm", "redis",
        )  # fmt: skip
        assert redis(copy, "carol", CAROL_PW, "GET", "stock") == "42"
        assert redis(copy, "carol", CAROL_PW, "GET", "cart:1") == "3 apples"
    finally:
        plat.run("db", "delete", "r1-copy", "--wait", check=False, timeout=900)


# -- replicas, switchover and move, both engines ------------------------------------------------
def _replica_and_switchover(
    plat: Platform,
    name: str,
    writer: type[Writer],
    dsn: str,
    has_write: Callable[[dict[str, Any], int], bool],
) -> None:
    """A replica of ``name`` through the hub, then a switchover to it under a writer."""
    plat.run("db", "replica", "create", name, "--wait", timeout=900)
    listed = plat.json("db", "replica", "list", name)
    assert [(m["name"], m["role"], m["state"]) for m in listed] == [
        (name, "primary", "ACTIVE"),
        (f"{name}-r1", "replica", "ACTIVE"),
    ]
    lag = [k for k in plat.engine_metrics(name, f"[{name}-r1]") if k.endswith(f"[{name}-r1]")]
    assert lag and lag[0].startswith("onep_db_replica_lag_"), lag
    shown = under_writer(plat, name, writer, dsn, has_write, "switchover")
    primary = next(m for m in shown["members"] if m["role"] == "primary")
    assert primary["name"] == f"{name}-r1"


def _killed_primary_fails_over(plat: Platform, name: str, writer: type[Writer], dsn: str) -> None:
    """The primary's container killed under a writer: a replica is promoted behind the same
    endpoint, the client writes again, no more than the last instant's writes are lost, and
    a new replica makes the group whole again."""
    before = plat.json("db", "show", name)
    old = next(m["name"] for m in before["members"] if m["role"] == "primary")
    w = writer.running(dsn, 1.5)
    broken_at = time.monotonic()
    subprocess.run(["podman", "kill", member_container(plat, old)], check=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            shown = plat.json("db", "show", name)
            primary = next((m for m in shown["members"] if m["role"] == "primary"), None)
            if shown["status"] == "ACTIVE" and primary and primary["name"] != old:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        wrote_after = w.wait_for_writes(3, time.monotonic())
    finally:
        w.stop()
    assert wrote_after >= 3, w.errors[-5:]
    lost = set(w.missing())
    assert all(broken_at - t < 1.0 for seq, t in w.acked if seq in lost), sorted(lost)[:10]
    assert shown["endpoint"] == before["endpoint"]
    deadline = time.monotonic() + 300
    while True:
        members = plat.json("db", "show", name)["members"]
        if sorted((m["role"], m["state"]) for m in members) == [
            ("primary", "ACTIVE"),
            ("replica", "ACTIVE"),
        ]:
            break
        assert time.monotonic() < deadline, members
        time.sleep(1.0)
    assert old not in [m["name"] for m in members]  # the former primary is discarded
    said = [e["message"] for e in plat.json("db", "events", name, "--limit", "500")]
    assert any(m.startswith(f"failover: {old} fenced") for m in said), said[-10:]
    assert any(m.startswith("switchover: ") for m in said), said[-10:]


def test_a_mariadb_replica_switchover_move_and_failover(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    ep = mdb["endpoint"]
    dsn = f"host={ep['host']} port={ep['port']} user=alice password={ALICE_PW} dbname=appdb"

    def has_write(member: dict[str, Any], seq: int) -> bool:
        sql = f"SELECT count(*) FROM onep_writes WHERE seq = {seq}"
        return mariadb(member, "alice", ALICE_PW, sql, "appdb") == "1"

    _replica_and_switchover(plat, "m1", MariaDbWriter, dsn, has_write)
    moved = under_writer(
        plat, "m1", MariaDbWriter, dsn, has_write, "move", "--flavor", "container.medium"
    )
    assert (moved["flavor"], moved["compute_type"]) == ("container.medium", "container")
    # a replica takes no writes
    replica = next(m for m in plat.json("db", "show", "m1")["members"] if m["role"] == "replica")
    with pytest.raises(AssertionError, match="read-only"):
        mariadb(replica, "alice", ALICE_PW, "INSERT INTO t VALUES (10)", "appdb")
    refused = plat.run("db", "replica", "detach", replica["name"], check=False)
    assert refused.returncode != 0 and "capability_not_supported" in refused.stderr
    _killed_primary_fails_over(plat, "m1", MariaDbWriter, dsn)


def test_a_redis_replica_switchover_failover_and_move_to_a_vm(
    plat: Platform, rdb: dict[str, Any]
) -> None:
    ep = rdb["endpoint"]
    dsn = f"host={ep['host']} port={ep['port']} user=carol password={CAROL_PW}"

    def has_write(member: dict[str, Any], seq: int) -> bool:
        return redis(member, "carol", CAROL_PW, "SISMEMBER", "onep_writes", str(seq)) == "1"

    _replica_and_switchover(plat, "r1", RedisWriter, dsn, has_write)
    replica = next(m for m in plat.json("db", "show", "r1")["members"] if m["role"] == "replica")
    with pytest.raises(AssertionError, match="READONLY"):
        redis(replica, "carol", CAROL_PW, "SET", "k", "v")
    _killed_primary_fails_over(plat, "r1", RedisWriter, dsn)
    # a move to another compute type: the replica on a VM reaches the hub through QEMU
    moved = under_writer(plat, "r1", RedisWriter, dsn, has_write, "move", "--flavor", "vm.small")
    assert (moved["flavor"], moved["compute_type"]) == ("vm.small", "vm")
