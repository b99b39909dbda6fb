"""MariaDB as a service end to end on a container: `onep db` against the real Podman and
the real MariaDB 10.11 image, used with the engine's own client."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Platform, own_platform

pytestmark = pytest.mark.e2e
ALICE_PW = "Alice-maria-7f2"


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with own_platform(tmp_path_factory, "onep-mariadb", ONEP_IMAGES="mariadb-10.11") as p:
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


def _mariadb(db: dict[str, Any], user: str, password: str, sql: str, database: str = "") -> str:
    """``sql`` through the database's endpoint with the mariadb client, as ``user``."""
    endpoint = db["endpoint"]
    argv = ["mariadb", "--no-defaults", "-h", endpoint["host"], "-P", str(endpoint["port"]),
            "-u", user, "--batch", "--skip-column-names", "-e", sql]  # fmt: skip
    out = subprocess.run(
        [*argv, *([database] if database else [])],
        env={"MYSQL_PWD": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(out.stderr.strip())
    return out.stdout.strip()


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
    _mariadb(mdb, "alice", ALICE_PW, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)", "appdb")
    assert _mariadb(mdb, "alice", ALICE_PW, "SELECT x FROM t", "appdb") == "7"
    # sized from the flavor: half its RAM is the buffer pool
    ram_mb = next(f["ram_mb"] for f in plat.json("flavor", "list") if f["name"] == mdb["flavor"])
    admin = plat.json("db", "credentials", "m1")
    pool = _mariadb(mdb, "admin", admin["password"], "SELECT @@innodb_buffer_pool_size")
    assert int(pool) == ram_mb // 2 * 1024 * 1024
    # `onep db connect` opens the mariadb client as the admin
    out = plat.run(
        "db", "connect", "m1", "--database", "appdb", "--", "-N", "-e", "SELECT x FROM t"
    )
    assert out.stdout.strip() == "7"


def test_users_and_grants_behave_as_mariadb(plat: Platform, mdb: dict[str, Any]) -> None:
    plat.run("db", "database", "create", "m1", "reports")
    bob = plat.json("db", "user", "create", "m1", "bob", "--database", "reports")
    _mariadb(mdb, "bob", bob["password"], "CREATE TABLE r (y int)", "reports")
    with pytest.raises(AssertionError, match="denied"):
        _mariadb(mdb, "bob", bob["password"], "SELECT * FROM t", "appdb")
    users = {u["name"]: u["databases"] for u in plat.json("db", "user", "list", "m1")}
    assert users == {"alice": ["appdb"], "bob": ["reports"]}
    plat.run("db", "user", "revoke", "m1", "bob", "reports")
    with pytest.raises(AssertionError, match="denied"):
        _mariadb(mdb, "bob", bob["password"], "SELECT * FROM r", "reports")
    plat.run("db", "user", "delete", "m1", "bob")
    assert [u["name"] for u in plat.json("db", "user", "list", "m1")] == ["alice"]


def test_what_mariadb_cannot_do_yet_is_refused_with_the_reason(
    plat: Platform, mdb: dict[str, Any]
) -> None:
    catalog = {d["name"]: d for d in plat.json("datastore", "list")}
    caps = {c["name"]: c for c in catalog["mariadb"]["versions"][0]["capabilities"]}
    assert caps["databases"]["supported"] and not caps["replicas"]["supported"]
    for argv in (("backup", "create", "m1"), ("replica", "create", "m1")):
        refused = plat.run("db", *argv, check=False)
        assert refused.returncode != 0 and "capability_not_supported" in refused.stderr, argv
        assert caps[argv[0] + "s"]["reason"] in " ".join(refused.stderr.split())  # unwrapped
