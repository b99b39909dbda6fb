"""Configuration groups on MariaDB 10.11 and Redis 7.0 end to end: the real images on
Podman, each value read back with the engine's own client over the database's endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.clients import mariadb, redis
from tests.e2e.conftest import Platform, own_platform

pytestmark = pytest.mark.e2e
ALICE_PW = "Alice-conf-9d2"
IMAGES = "mariadb-10.11,redis-7.0"


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with own_platform(tmp_path_factory, "onep-config-engines", ONEP_IMAGES=IMAGES) as p:
        yield p


def _admin(plat: Platform, name: str) -> str:
    return str(plat.json("db", "credentials", name)["password"])


@pytest.fixture(scope="module")
def mdb(plat: Platform) -> Iterator[dict[str, Any]]:
    db = plat.json(
        "db", "create", "mcfg", "--datastore", "mariadb", "--version", "10.11",
        "--flavor", "container.small", "--wait", timeout=900,
    )  # fmt: skip
    yield db
    plat.run("db", "delete", "mcfg", "--wait", check=False)


@pytest.fixture(scope="module")
def rdb(plat: Platform) -> Iterator[dict[str, Any]]:
    db = plat.json(
        "db", "create", "rcfg", "--datastore", "redis", "--version", "7.0",
        "--flavor", "container.small", "--user", f"alice:{ALICE_PW}", "--wait", timeout=900,
    )  # fmt: skip
    yield db
    plat.run("db", "delete", "rcfg", "--wait", check=False)


def test_mariadb_takes_a_group_live_and_its_read_only_variables_at_the_restart(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    def variable(name: str) -> str:
        return mariadb(mdb, "admin", _admin(plat, "mcfg"), f"SELECT @@GLOBAL.{name}")

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
    attached = plat.json("db", "config", "attach", "mcfg", "mtuned")
    assert attached["restart_required"] is True
    assert variable("max_connections") == "200"  # SET GLOBAL
    assert variable("long_query_time") == "0.500000"
    assert variable("back_log") == before  # read-only: at the restart
    plat.run("db", "restart", "mcfg", "--wait")
    assert plat.json("db", "show", "mcfg")["restart_required"] is False
    assert variable("back_log") == "123"
    assert variable("max_connections") == "200"  # the option file kept it
    detached = plat.json("db", "config", "detach", "mcfg")
    assert detached["configuration"] is None
    assert variable("max_connections") != "200"


def test_redis_takes_a_group_live(plat: Platform, rdb: dict[str, Any]) -> None:
    def info(section: str, key: str) -> str:
        out = redis(rdb, "alice", ALICE_PW, "INFO", section)
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith(key + ":"))  # fmt: skip

    assert info("memory", "maxmemory_policy") == "noeviction"
    plat.json(
        "db", "config", "create", "rtuned", "--datastore", "redis", "--version", "7.0",
        "--set", "maxmemory-policy=allkeys-lru", "--set", "hz=20", "--set", "maxmemory=100mb",
    )  # fmt: skip
    attached = plat.json("db", "config", "attach", "rcfg", "rtuned")
    assert (attached["configuration"], attached["restart_required"]) == ("rtuned", False)
    assert info("memory", "maxmemory_policy") == "allkeys-lru"  # CONFIG SET
    assert info("memory", "maxmemory") == str(100 * 1024 * 1024)
    assert info("server", "configured_hz") == "20"
    plat.run("db", "restart", "rcfg", "--wait")
    assert info("memory", "maxmemory_policy") == "allkeys-lru"  # redis.conf kept it
    plat.json("db", "config", "detach", "rcfg")
    assert info("memory", "maxmemory_policy") == "noeviction"  # the flavor's, at once
