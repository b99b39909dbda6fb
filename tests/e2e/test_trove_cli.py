"""The Trove v1.0 facade end to end: the real ``openstack database …`` CLI
(python-openstackclient + python-troveclient) against a running platform, signed in through
the Keystone v3 facade with a platform user's password and a ``clouds.yaml`` like the one
docs/openstack.md shows (``openstack --os-cloud onep …``); one PostgreSQL database for the
whole module, and a real ``psql`` login to what the CLI created. Skipping identity
(``--os-auth-type admin_token`` with a platform token), as COMPAT.md notes the clients
allow, works too.

On the same pg1: backups and a restore through the CLI, the same flows through
openstacksdk, and trove-tempest-plugin's PostgreSQL scenarios (basic, backup, replication)
as their request sequences (raw HTTP with a Keystone token, as the plugin's client sends
them; the plugin itself needs Keystone admin, Swift and Neutron); then ``resize volume``,
``resize flavor`` (a move), ``eject`` (a failover), root, logs, limits and quotas through
the CLI. Besides pg1, the module makes pg2 and pg3 (restored from backups) and replicas of
pg1 (the replication test's, a move's new primary, the eject's replica and its
replacement).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e
OPENSTACK = str(Path(sys.executable).with_name("openstack"))
ALICE_PW = "S3cret-pass-1"
PROJECT = "trove-e2e"
# trove-tempest-plugin's constants
DB_PASS = "password"
NEW_PASS = "new_password"


class OpenStack:
    """The ``openstack`` CLI with one set of authentication options."""

    def __init__(self, *auth: str, env: dict[str, str] | None = None) -> None:
        self.base = [OPENSTACK, *auth]
        self.env = env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=120, env=self.env
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-f", "json").stdout)


@pytest.fixture(scope="module")
def project(platform: Platform) -> dict[str, Any]:
    return dict(platform.json("project", "create", "trove-e2e"))


@pytest.fixture(scope="module")
def user(platform: Platform, project: dict[str, Any]) -> dict[str, Any]:
    """A user of the project with a password (``onep user create``): what every client here
    signs in with through /identity."""
    return dict(platform.json("user", "create", "ostack", "--project", PROJECT))


@pytest.fixture(scope="module")
def osc(
    platform: Platform, user: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> OpenStack:
    """``openstack --os-cloud onep``: the project's user signs in with its password through
    /identity."""
    clouds = tmp_path_factory.mktemp("openstack") / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  onep:\n    auth:\n"
        f"      auth_url: http://127.0.0.1:{platform.port}/identity\n"
        f'      username: ostack\n      password: "{user["password"]}"\n'
        "      project_name: trove-e2e\n      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
        "    identity_api_version: 3\n    region_name: RegionOne\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(clouds.parent)}
    return OpenStack("--os-cloud", "onep", env={**env, "OS_CLIENT_CONFIG_FILE": str(clouds)})


class Trove:
    """trove-tempest-plugin's client as raw HTTP: a Keystone v3 token by password, then the
    catalog's ``database`` endpoint, each call checked for the status code the plugin
    expects."""

    def __init__(self, port: int, user: str, password: str) -> None:
        scope = {"project": {"name": PROJECT, "domain": {"name": "Default"}}}
        identity = {
            "methods": ["password"],
            "password": {
                "user": {"name": user, "domain": {"name": "Default"}, "password": password}
            },
        }
        got = httpx.post(
            f"http://127.0.0.1:{port}/identity/v3/auth/tokens",
            json={"auth": {"identity": identity, "scope": scope}},
            timeout=30,
        )
        assert got.status_code == 201, got.text
        [service] = [s for s in got.json()["token"]["catalog"] if s["type"] == "database"]
        url = next(e["url"] for e in service["endpoints"] if e["interface"] == "public")
        self.http = httpx.Client(
            base_url=url, headers={"X-Auth-Token": got.headers["X-Subject-Token"]}, timeout=60
        )

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        got = self.http.request(method, path, json=body)
        assert got.status_code == expect, f"{method} {path}: {got.status_code} {got.text}"
        return got.json() if got.content else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def instance(self, ident: str) -> dict[str, Any] | None:
        """``GET /instances/{ident}``; None once it is gone (404)."""
        got = self.http.get(f"instances/{ident}")
        if got.status_code == 404:
            return None
        assert got.status_code == 200, got.text
        return dict(got.json()["instance"])

    def wait_instance(
        self, ident: str, until: Any = None, timeout: float = 600
    ) -> dict[str, Any] | None:
        """The plugin's ``wait_for_instance_status``: until ACTIVE/HEALTHY (and ``until``
        holds of the body), or with ``until="DELETED"`` until 404; ERROR fails at once."""
        deadline = time.monotonic() + timeout
        shown = None
        while time.monotonic() < deadline:
            shown = self.instance(ident)
            if until == "DELETED":
                if shown is None:
                    return None
            elif shown is not None:  # the plugin waits on through a 404 too
                assert shown["status"] != "ERROR", shown
                healthy = shown["status"] == "ACTIVE" and shown["operating_status"] == "HEALTHY"
                if healthy and (until is None or until(shown)):
                    return shown
            time.sleep(2)
        raise AssertionError(f"{ident}: still {shown}")

    def wait_backup(self, ident: str, timeout: float = 600) -> dict[str, Any]:
        """The plugin's ``wait_for_backup_status``: until COMPLETED; FAILED fails at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            backup = self.get(f"backups/{ident}")["backup"]
            assert backup["status"] != "FAILED", backup
            if backup["status"] == "COMPLETED":
                return dict(backup)
            time.sleep(2)
        raise AssertionError(f"backup {ident} did not complete")


@pytest.fixture(scope="module")
def trove(platform: Platform, user: dict[str, Any]) -> Iterator[Trove]:
    client = Trove(platform.port, "ostack", user["password"])
    yield client
    client.http.close()


def psql(
    host: str, port: int | str, user: str, password: str, db: str, sql: str
) -> subprocess.CompletedProcess[str]:
    """A real ``psql`` login, one command; what it printed (``-tA``) in ``stdout``."""
    return subprocess.run(
        ["psql", "-h", host, "-p", str(port), "-U", user, "-d", db, "-tAc", sql],
        env={"PGPASSWORD": password, "PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def sql_ok(instance: dict[str, Any], user: str, password: str, db: str, sql: str) -> str:
    """``sql`` through psql at a Trove instance's address, as ``user``; what it printed."""
    out = psql(instance["hostname"], instance["port"], user, password, db, sql)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def refused(instance: dict[str, Any], user: str, password: str, db: str) -> bool:
    """Whether psql's login as ``user`` to ``db`` fails."""
    return (
        psql(instance["hostname"], instance["port"], user, password, db, "SELECT 1").returncode != 0
    )


def wait_cli_active(osc: OpenStack, name: str, timeout: float = 600) -> dict[str, Any]:
    """``openstack database instance show`` until ACTIVE/HEALTHY."""
    deadline = time.monotonic() + timeout
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = osc.json("database", "instance", "show", name)
        if shown["status"] == "ACTIVE" and shown["operating_status"] == "HEALTHY":
            return shown
        assert shown["status"] in ("BUILD", "ACTIVE"), shown
        time.sleep(2)
    raise AssertionError(f"{name} did not become ACTIVE/HEALTHY: {shown}")


@pytest.fixture(scope="module")
def pg1(osc: OpenStack) -> Iterator[dict[str, Any]]:
    """``openstack database instance create pg1 …`` until ACTIVE/HEALTHY."""
    made = osc.json(
        "database", "instance", "create", "pg1",
        "--flavor", "container.small", "--size", "1",
        "--datastore", "postgresql", "--datastore-version", "15",
        "--databases", "appdb", "--users", f"alice:{ALICE_PW}",
    )  # fmt: skip
    assert made["name"] == "pg1" and made["status"] == "BUILD", made
    deadline = time.monotonic() + 600
    shown = made
    while time.monotonic() < deadline:
        shown = osc.json("database", "instance", "show", "pg1")
        if shown["status"] == "ACTIVE" and shown["operating_status"] == "HEALTHY":
            break
        assert shown["status"] in ("BUILD", "ACTIVE"), shown
        time.sleep(2)
    else:
        raise AssertionError(f"pg1 did not become ACTIVE/HEALTHY: {shown}")
    yield shown
    osc.run("database", "instance", "delete", "pg1", check=False)


def test_a_platform_token_skips_identity(platform: Platform, project: dict[str, Any]) -> None:
    endpoint = f"http://127.0.0.1:{platform.port}/v1.0/{project['project']['id']}"
    direct = OpenStack(
        "--os-auth-type", "admin_token", "--os-token", project["token"], "--os-endpoint", endpoint
    )
    assert "container.small" in {f["Name"] for f in direct.json("database", "flavor", "list")}


def test_the_catalog_through_the_cli(osc: OpenStack) -> None:
    flavors = {f["Name"]: f for f in osc.json("database", "flavor", "list")}
    assert flavors["container.small"]["RAM"] == 512 and flavors["container.small"]["ID"]
    assert "postgresql" in {d["Name"] for d in osc.json("datastore", "list")}
    versions = osc.json("datastore", "version", "list", "postgresql")
    assert "15" in {v["Name"] for v in versions}
    missing = osc.run("database", "instance", "show", "nope", check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_create_reaches_active_healthy_and_psql_logs_in(
    osc: OpenStack, pg1: dict[str, Any]
) -> None:
    assert pg1["datastore"] == "postgresql" and pg1["datastore_version"] == "15"
    assert pg1["volume"] == 1 and pg1["compute_type"] == "container"
    listed = osc.json("database", "instance", "list")
    assert [(i["Name"], i["Status"]) for i in listed] == [("pg1", "ACTIVE")]
    assert [d["Name"] for d in osc.json("database", "db", "list", "pg1")] == ["appdb"]
    users = osc.json("database", "user", "list", "pg1")
    assert [(u["Name"], u["Host"]) for u in users] == [("alice", "%")]
    out = subprocess.run(
        ["psql", "-h", pg1["ip"], "-p", str(pg1["port"]), "-U", "alice", "-d", "appdb",
         "-tAc", "SELECT current_user, current_database()"],
        env={"PGPASSWORD": ALICE_PW, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "alice|appdb", out.stderr


def test_databases_and_users_through_the_cli(osc: OpenStack, pg1: dict[str, Any]) -> None:
    osc.run("database", "db", "create", "pg1", "reports")
    assert [d["Name"] for d in osc.json("database", "db", "list", "pg1")] == ["appdb", "reports"]
    osc.run("database", "user", "create", "pg1", "bob", "Bob-pass-123", "--databases", "reports")
    osc.run("database", "user", "grant", "access", "pg1", "bob", "appdb")
    access = osc.json("database", "user", "show", "access", "pg1", "bob")
    assert sorted(a["Name"] for a in access) == ["appdb", "reports"]
    osc.run("database", "user", "delete", "pg1", "bob")
    osc.run("database", "db", "delete", "pg1", "reports")
    assert [u["Name"] for u in osc.json("database", "user", "list", "pg1")] == ["alice"]


# -- trove-tempest-plugin's TestInstanceBasicPostgreSQL, as its requests -----------------------
def _names(items: list[dict[str, Any]]) -> list[str]:
    return [i["name"] for i in items]


def _wait_listed(trove: Trove, path: str, key: str, present: set[str], absent: set[str]) -> None:
    """The plugin's waits (``_wait_db_create``, ``wait_for_database_deletion``): up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        names = set(_names(trove.get(path)[key]))
        if present <= names and not absent & names:
            return
        assert time.monotonic() < deadline, (path, names)
        time.sleep(1)


def test_tempest_basic_database_access_and_user_database(trove: Trove, pg1: dict[str, Any]) -> None:
    """test_database_access, then test_user_database of the PostgreSQL class: databases and
    users made, a password changed, access granted and revoked, each seen by a psql login.
    The plugin's last step renames a user (``PUT …/users/foo_user {"user": {"name": …}}``):
    the platform's users keep their names, so that is a 400 here (docs/trove.md)."""
    inst = f"instances/{pg1['id']}"
    shown = trove.get(inst)["instance"]
    assert "appdb" in _names(trove.get(f"{inst}/databases")["databases"])
    assert "alice" in _names(trove.get(f"{inst}/users")["users"])
    assert sql_ok(shown, "alice", ALICE_PW, "appdb", "SELECT 1") == "1"

    users = f"{inst}/users"
    assert "foo_user" not in _names(trove.get(users)["users"])
    assert not {"foo", "bar"} & set(_names(trove.get(f"{inst}/databases")["databases"]))
    made = {"databases": [{"name": "foo"}, {"name": "bar"}]}
    assert trove.call("POST", f"{inst}/databases", made, expect=202) is None
    _wait_listed(trove, f"{inst}/databases", "databases", {"foo", "bar"}, set())
    foo_user = {"databases": [{"name": "foo"}], "name": "foo_user", "password": DB_PASS}
    trove.call("POST", users, {"users": [foo_user]}, expect=202)
    assert "foo_user" in _names(trove.get(users)["users"])
    assert sql_ok(shown, "foo_user", DB_PASS, "foo", "SELECT current_user") == "foo_user"

    trove.call("PUT", f"{users}/foo_user", {"user": {"password": NEW_PASS}}, expect=202)
    assert sql_ok(shown, "foo_user", NEW_PASS, "foo", "SELECT 1") == "1"
    assert refused(shown, "foo_user", DB_PASS, "foo")  # the old password no longer logs in
    access = f"{users}/foo_user/databases"
    assert "bar" not in _names(trove.get(access)["databases"])
    grant = {"databases": [{"name": "bar"}]}
    trove.call("PUT", access, grant, expect=202)
    assert "bar" in _names(trove.get(access)["databases"])
    assert sql_ok(shown, "foo_user", NEW_PASS, "bar", "SELECT current_database()") == "bar"
    trove.call("DELETE", f"{access}/foo", expect=202)
    assert refused(shown, "foo_user", NEW_PASS, "foo")
    trove.call("DELETE", f"{access}/bar", expect=202)
    assert refused(shown, "foo_user", NEW_PASS, "bar")
    trove.call("PUT", access, grant, expect=202)
    assert sql_ok(shown, "foo_user", NEW_PASS, "bar", "SELECT 1") == "1"

    trove.call("DELETE", f"{inst}/databases/bar", expect=202)
    _wait_listed(trove, f"{inst}/databases", "databases", set(), {"bar"})
    renamed = trove.call("PUT", f"{users}/foo_user", {"user": {"name": "bar_user"}}, expect=400)
    assert renamed["badRequest"]["code"] == 400
    trove.call("DELETE", f"{users}/foo_user", expect=202)
    assert "foo_user" not in _names(trove.get(users)["users"])
    trove.call("DELETE", f"{inst}/databases/foo", expect=202)
    _wait_listed(trove, f"{inst}/databases", "databases", set(), {"foo"})
    assert _names(trove.get(users)["users"]) == ["alice"]


def _restart(trove: Trove, ident: str) -> None:
    """The plugin's ``restart_instance``: ``{"restart": {}}`` → 202, REBOOT, then
    ACTIVE/HEALTHY (seen here: the restart is not done when the 202 comes)."""
    trove.call("POST", f"instances/{ident}/action", {"restart": {}}, expect=202)
    seen = {str(trove.get(f"instances/{ident}")["instance"]["status"])}
    assert seen <= {"REBOOT", "ACTIVE"}, seen
    deadline = time.monotonic() + 300
    while True:
        shown = trove.get(f"instances/{ident}")["instance"]
        seen.add(shown["status"])
        if shown["status"] == "ACTIVE" and shown["operating_status"] == "HEALTHY":
            break
        assert shown["status"] in ("REBOOT", "ACTIVE"), shown
        assert time.monotonic() < deadline, shown
        time.sleep(1)
    assert "REBOOT" in seen, seen


def _max_connections(shown: dict[str, Any]) -> int:
    return int(sql_ok(shown, "alice", ALICE_PW, "appdb", "SHOW max_connections"))


def test_tempest_basic_configuration_and_restart(trove: Trove, pg1: dict[str, Any]) -> None:
    """test_configuration of the PostgreSQL class (``configuration_test`` with restarts):
    a group with max_connections 101 attached, a restart (REBOOT → ACTIVE), PATCH to 102
    (200), a restart, detach, a restart: the engine's value each time, read through psql."""
    ident = pg1["id"]
    shown = trove.get(f"instances/{ident}")["instance"]
    default = _max_connections(shown)
    assert default not in (101, 102)
    body = {
        "configuration": {
            "datastore": {"type": "postgresql", "version": shown["datastore"]["version"]},
            "values": {"max_connections": 101},
            "name": "tempest-config",
        }
    }
    config = trove.call("POST", "configurations", body)["configuration"]
    assert config["instance_count"] == 0
    assert trove.get(f"configurations/{config['id']}/instances")["instances"] == []
    trove.call("PUT", f"instances/{ident}", {"instance": {"configuration": config["id"]}}, 202)
    _restart(trove, ident)
    attached = trove.get(f"configurations/{config['id']}/instances")["instances"]
    assert [i["id"] for i in attached] == [ident]
    assert _max_connections(shown) == 101

    patch = {"configuration": {"values": {"max_connections": 102}}}
    assert trove.call("PATCH", f"configurations/{config['id']}", patch, expect=200) is None
    _restart(trove, ident)
    assert _max_connections(shown) == 102

    trove.call("PUT", f"instances/{ident}", {"instance": {"configuration": None}}, expect=202)
    _restart(trove, ident)
    assert trove.get(f"configurations/{config['id']}/instances")["instances"] == []
    assert _max_connections(shown) == default
    trove.call("DELETE", f"configurations/{config['id']}", expect=202)


# -- backups and a restore: the CLI, and TestBackupPostgreSQL's requests ------------------------
def test_backup_create_list_and_restore_through_the_cli(
    osc: OpenStack, trove: Trove, pg1: dict[str, Any]
) -> None:
    """``openstack database backup create|list`` (a full backup), the plugin's incremental
    backup (``incremental: 1``, ``parent_id``) with its rows (1, then 99), then
    ``openstack database instance create pg2 … --backup <incremental>``: pg2 reaches
    ACTIVE/HEALTHY and holds both rows, not the one written after the backup; beside it,
    the plugin's restore of the full backup (pg3, its raw request) holds the first row only.
    Both are then deleted until 404."""
    shown = trove.get(f"instances/{pg1['id']}")["instance"]
    sql_ok(shown, "alice", ALICE_PW, "appdb",
           "CREATE TABLE persons (id INT PRIMARY KEY NOT NULL, string VARCHAR(255)); "
           "INSERT INTO persons (id, string) VALUES (1, 'Lingxian Kong')")  # fmt: skip
    full = osc.json("database", "backup", "create", "pg1-full", "--instance", "pg1")
    assert full["name"] == "pg1-full" and full["instance_id"] == pg1["id"], full
    assert full["status"] in ("NEW", "BUILDING", "COMPLETED"), full
    done = trove.wait_backup(full["id"])
    assert done["datastore"]["type"] == "postgresql" and done["size"] >= 0
    listed = osc.json("database", "backup", "list")
    assert [(b["Name"], b["Status"], b["Instance ID"]) for b in listed] == [
        ("pg1-full", "COMPLETED", pg1["id"])
    ]
    assert [b["Name"] for b in osc.json("database", "backup", "list", "--instance", "pg1")] == [
        "pg1-full"
    ]

    sql_ok(shown, "alice", ALICE_PW, "appdb",
           "INSERT INTO persons (id, string) VALUES (99, 'OpenStack')")  # fmt: skip
    body = {
        "backup": {
            "name": "pg1-inc",
            "instance": pg1["id"],
            "incremental": 1,
            "parent_id": full["id"],
        }
    }
    inc = trove.call("POST", "backups", body, expect=202)["backup"]
    inc = trove.wait_backup(inc["id"])
    assert inc["type"] == "incr" and inc["parent_name"] == "pg1-full", inc
    sql_ok(shown, "alice", ALICE_PW, "appdb",
           "INSERT INTO persons (id, string) VALUES (100, 'after the backup')")  # fmt: skip

    made = osc.json(
        "database", "instance", "create", "pg2",
        "--flavor", "container.small", "--size", "1",
        "--datastore", "postgresql", "--datastore-version", done["datastore"]["version"],
        "--backup", inc["id"],
    )  # fmt: skip
    assert made["name"] == "pg2" and made["status"] == "BUILD", made
    # the plugin's restore of its full backup, as its request (built beside pg2)
    body = {
        "instance": {
            "name": "pg3",
            "flavorRef": "container.small",
            "volume": {"size": 1},
            "datastore": {"type": "postgresql", "version": done["datastore"]["version"]},
            "restorePoint": {"backupRef": full["id"]},
            "nics": [{"net-id": "private"}],
        }
    }
    pg3 = trove.call("POST", "instances", body)["instance"]
    assert pg3["status"] == "BUILD", pg3
    pg2 = wait_cli_active(osc, "pg2", timeout=900)
    rows = psql(pg2["ip"], pg2["port"], "alice", ALICE_PW, "appdb",
                "SELECT id, string FROM persons ORDER BY id")  # fmt: skip
    assert rows.returncode == 0, rows.stderr
    assert rows.stdout.split("\n")[:-1] == ["1|Lingxian Kong", "99|OpenStack"]
    restored = trove.wait_instance(pg3["id"], timeout=900)
    assert restored is not None
    assert sql_ok(restored, "alice", ALICE_PW, "appdb", "SELECT id FROM persons") == "1"
    osc.run("database", "instance", "delete", "pg2")
    trove.call("DELETE", f"instances/{pg3['id']}", expect=202)
    assert trove.wait_instance(made["id"], until="DELETED", timeout=300) is None
    assert trove.wait_instance(pg3["id"], until="DELETED", timeout=300) is None
    assert osc.run("database", "instance", "show", "pg2", check=False).returncode == 1


# -- openstacksdk ------------------------------------------------------------------------------
CAROL_PW = "Carol-pass-123"


def test_the_same_flows_through_openstacksdk(
    platform: Platform, user: dict[str, Any], pg1: dict[str, Any]
) -> None:
    """``openstack.connect`` with password auth against /identity, then ``conn.database``:
    flavors, instances list and get, databases and users made and deleted (a psql login as
    the new user), and the backups (openstacksdk has no backup resource: its database
    proxy's own GET)."""
    import openstack

    conn = openstack.connect(
        auth_url=f"http://127.0.0.1:{platform.port}/identity",
        username="ostack",
        password=user["password"],
        project_name=PROJECT,
        user_domain_name="Default",
        project_domain_name="Default",
        region_name="RegionOne",
        load_yaml_config=False,
        load_envvars=False,
    )
    try:
        db = conn.database
        flavors = {f.name: f for f in db.flavors()}
        assert flavors["container.small"].ram == 512
        assert db.find_flavor("container.small", ignore_missing=False).name == "container.small"
        assert [i.name for i in db.instances()] == ["pg1"]
        inst = db.get_instance(pg1["id"])
        assert (inst.name, inst.status) == ("pg1", "ACTIVE")
        assert inst.datastore["type"] == "postgresql" and inst.volume["size"] == 1
        assert db.find_instance("pg1", ignore_missing=False).id == pg1["id"]

        db.create_database(inst, name="sdkdb")
        assert "sdkdb" in [d.name for d in db.databases(inst)]
        db.create_user(inst, name="carol", password=CAROL_PW, databases=[{"name": "sdkdb"}])
        assert "carol" in [u.name for u in db.users(inst)]
        out = psql(pg1["ip"], pg1["port"], "carol", CAROL_PW, "sdkdb",
                   "SELECT current_user, current_database()")  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip() == "carol|sdkdb", out.stderr
        db.delete_user("carol", instance=inst, ignore_missing=False)
        db.delete_database("sdkdb", instance=inst, ignore_missing=False)
        assert "carol" not in [u.name for u in db.users(inst)]
        assert "sdkdb" not in [d.name for d in db.databases(inst)]

        got = db.get("/backups")
        assert got.status_code == 200
        assert sorted(b["name"] for b in got.json()["backups"]) == ["pg1-full", "pg1-inc"]
    finally:
        conn.close()


# -- trove-tempest-plugin's TestReplicationPostgreSQL, as its requests ---------------------------
def _persons(instance: dict[str, Any]) -> list[str]:
    rows = sql_ok(instance, "alice", ALICE_PW, "appdb", "SELECT id, string FROM repl ORDER BY id")
    return rows.split("\n") if rows else []


def _eventually(check: Any, timeout: float = 60) -> None:
    """The plugin sleeps 5 s and reads once; here: read until true, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not replicated in time"
        time.sleep(1)


def test_tempest_replication(trove: Trove, pg1: dict[str, Any]) -> None:
    """replication_test of the PostgreSQL class on pg1: ``replica_of`` makes a replica that
    reaches ACTIVE/HEALTHY, the source lists it in ``replicas`` and it names the source in
    ``replica_of``; rows and a new database replicate; ``promote_to_replica_source`` makes
    it the source (pg1's id then reads as its replica, as does the plugin's second replica)
    and writes on it replicate to both. The plugin's detach of the former primary is
    refused (409: pg1's name and id stay with its group); the second replica is deleted, pg1
    promoted back and the first replica detached with the plugin's ``PUT {"replica_of":
    ""}``: pg1 stays the instance the rest of the module uses. The replica ends as an
    instance of its own, which a psql login reaches, and is deleted until 404."""
    source = pg1["id"]
    primary = trove.get(f"instances/{source}")["instance"]
    sql_ok(primary, "alice", ALICE_PW, "appdb",
           "CREATE TABLE repl (id int, string varchar(255)); "
           "INSERT INTO repl VALUES (1, 'replication')")  # fmt: skip
    body = {
        "instance": {
            "name": "pg1-replica",
            "nics": [{"net-id": "private"}],
            "access": {"is_public": True},
            "replica_of": source,
        }
    }
    made = trove.call("POST", "instances", body)["instance"]
    assert made["name"] == "pg1-replica" and made["replica_of"]["id"] == source, made
    rid = made["id"]
    try:
        replica = trove.wait_instance(rid, timeout=900)
        assert replica is not None
        shown = trove.get(f"instances/{source}")["instance"]
        assert [r["id"] for r in shown["replicas"]] == [rid]
        assert replica["replica_of"]["id"] == source and "replicas" not in replica
        _eventually(lambda: _persons(replica) == ["1|replication"])
        ro = psql(replica["hostname"], replica["port"], "alice", ALICE_PW, "appdb",
                  "INSERT INTO repl VALUES (0, 'no')")  # fmt: skip
        assert ro.returncode != 0 and "read-only" in ro.stderr, ro.stderr

        # a database made on the source appears on the replica
        trove.call("POST", f"instances/{source}/databases",
                   {"databases": [{"name": "db_for_replication"}]}, expect=202)  # fmt: skip
        listing = "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"
        _eventually(
            lambda: (
                "db_for_replication"
                in sql_ok(replica, "alice", ALICE_PW, "appdb", listing).split("\n")
            )
        )
        assert sql_ok(primary, "alice", ALICE_PW, "appdb", listing) == sql_ok(
            replica, "alice", ALICE_PW, "appdb", listing
        )

        # the plugin's second replica: both listed, the new database and the rows on it
        body["instance"]["name"] = "pg1-replica-2"
        r2id = trove.call("POST", "instances", body)["instance"]["id"]
        replica2 = trove.wait_instance(r2id, timeout=900)
        assert replica2 is not None and replica2["replica_of"]["id"] == source
        listed = trove.get(f"instances/{source}")["instance"]["replicas"]
        assert sorted(r["id"] for r in listed) == sorted([rid, r2id])
        _eventually(lambda: _persons(replica2) == ["1|replication"])
        assert "db_for_replication" in sql_ok(replica2, "alice", ALICE_PW, "appdb", listing)

        # promote the replica: it is the source now, pg1's id and the second replica its
        # replicas
        trove.call("POST", f"instances/{rid}/action", {"promote_to_replica_source": {}}, 202)
        promoted = trove.wait_instance(rid, until=lambda i: "replica_of" not in i)
        assert promoted is not None
        assert sorted(r["id"] for r in promoted["replicas"]) == sorted([source, r2id])
        former = trove.wait_instance(source)
        assert former is not None and former["replica_of"]["id"] == rid
        again = trove.wait_instance(r2id)
        assert again is not None and again["replica_of"]["id"] == rid
        sql_ok(promoted, "alice", ALICE_PW, "appdb", "INSERT INTO repl VALUES (2, 'promote')")
        _eventually(lambda: _persons(former) == ["1|replication", "2|promote"])
        _eventually(lambda: _persons(again) == ["1|replication", "2|promote"])
        # the plugin then detaches the former primary: it bears the database instance's
        # name and id, which stay with the group here (docs/trove.md)
        refused = trove.call("PUT", f"instances/{source}", {"instance": {"replica_of": ""}}, 409)
        assert refused["conflictingRequest"]["error_code"] == "detach_of_named_server"
        # the plugin's clean-up deletes the second replica first
        trove.call("DELETE", f"instances/{r2id}", expect=202)
        assert trove.wait_instance(r2id, until="DELETED", timeout=300) is None

        # back: pg1 the source again, then the replica detached (the plugin's PUT)
        trove.call("POST", f"instances/{source}/action", {"promote_to_replica_source": {}}, 202)
        back = trove.wait_instance(source, until=lambda i: "replica_of" not in i)
        assert back is not None and [r["id"] for r in back["replicas"]] == [rid]
        # the plugin waits for each instance after a promotion: the replica rejoins first
        rejoined = trove.wait_instance(rid, until=lambda i: "replica_of" in i)
        assert rejoined is not None and rejoined["replica_of"]["id"] == source
        trove.call("PUT", f"instances/{rid}", {"instance": {"replica_of": ""}}, expect=202)
        alone = trove.wait_instance(rid, until=lambda i: "replica_of" not in i, timeout=900)
        assert alone is not None and "replicas" not in alone
        assert "replicas" not in trove.get(f"instances/{source}")["instance"]
        sql_ok(alone, "alice", ALICE_PW, "appdb", "INSERT INTO repl VALUES (3, 'detached')")
        assert _persons(alone) == ["1|replication", "2|promote", "3|detached"]
        assert _persons(back) == ["1|replication", "2|promote"]
    finally:  # as the plugin's clean-up: whatever the replica became, it goes
        trove.http.delete(f"instances/{rid}")
    assert trove.wait_instance(rid, until="DELETED", timeout=300) is None
    trove.call("DELETE", f"instances/{source}/databases/db_for_replication", expect=202)
    assert [i["name"] for i in trove.get("instances")["instances"]] == ["pg1"]


# -- resize flavor, resize volume, eject: the CLI ---------------------------------------------
def _watch(trove: Trove, ident: str, words: set[str], until: Any, timeout: float = 600) -> set[str]:
    """The Trove status words ``ident`` shows, read as fast as the API answers, until it is
    ACTIVE/HEALTHY and ``until`` holds of it; any word outside ``words`` fails."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        shown = trove.instance(ident)
        assert shown is not None and shown["status"] in words | {"ACTIVE"}, shown
        seen.add(shown["status"])
        if shown["status"] == "ACTIVE" and shown["operating_status"] == "HEALTHY" and until(shown):
            return seen
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)


def _went_through(platform: Platform, token: str, status: str) -> list[dict[str, Any]]:
    """The platform's own record of pg1 (``onep db events``): the changes into ``status``."""
    events = platform.json("db", "events", "pg1", "--limit", "200", ONEP_TOKEN=token)
    return [e for e in events if e["to_status"] == status != e["from_status"]]


def test_resize_volume_resize_flavor_and_eject_through_the_cli(
    platform: Platform, project: dict[str, Any], osc: OpenStack, trove: Trove,
    pg1: dict[str, Any],
) -> None:  # fmt: skip
    """``openstack database instance resize volume pg1 2`` (storage growth: on a container
    the size is recorded, Podman's volumes have no quota), ``resize flavor pg1
    container.medium`` (a move: a replica on the new flavor, a switchover, the former
    primary gone; the instance keeps its id) and ``eject pg1`` with a replica (a failover to
    it: the primary fenced, the replica promoted, a new replica in place of the former
    primary). Each reads RESIZE or EJECT in between (the platform's events record RESIZE
    and FAILOVER), ends ACTIVE/HEALTHY, and psql reads the rows written before at the
    instance's address."""
    ident, token = pg1["id"], project["token"]
    shown = trove.get(f"instances/{ident}")["instance"]
    sql_ok(shown, "alice", ALICE_PW, "appdb",
           "CREATE TABLE moved (id int); INSERT INTO moved VALUES (1), (2)")  # fmt: skip

    osc.run("database", "instance", "resize", "volume", "pg1", "2")
    _watch(trove, ident, {"RESIZE"}, lambda i: i["volume"]["size"] == 2)
    assert _went_through(platform, token, "RESIZE")
    grown = osc.json("database", "instance", "show", "pg1")
    assert (grown["volume"], grown["flavor_name"]) == (2, "container.small"), grown
    assert sql_ok(grown, "alice", ALICE_PW, "appdb", "SELECT count(*) FROM moved") == "2"
    shrink = osc.run("database", "instance", "resize", "volume", "pg1", "1", check=False)
    assert shrink.returncode != 0 and "storage only grows" in shrink.stderr, shrink.stderr

    resizes = len(_went_through(platform, token, "RESIZE"))
    osc.run("database", "instance", "resize", "flavor", "pg1", "container.medium")
    seen = _watch(trove, ident, {"RESIZE"}, lambda i: i["flavor_name"] == "container.medium")
    assert "RESIZE" in seen, seen  # a move builds a container: never over before a read
    assert len(_went_through(platform, token, "RESIZE")) == resizes + 1
    moved = osc.json("database", "instance", "show", "pg1")
    assert (moved["id"], moved["compute_type"], moved["volume"]) == (ident, "container", 2)
    assert [i["Name"] for i in osc.json("database", "instance", "list")] == ["pg1"]
    sql_ok(moved, "alice", ALICE_PW, "appdb", "INSERT INTO moved VALUES (3)")

    made = trove.call("POST", "instances", {"instance": {"name": "pg1-r2", "replica_of": ident}})
    assert made["instance"]["replica_of"]["id"] == ident
    replica = trove.wait_instance("pg1-r2", timeout=900)
    assert replica is not None
    _eventually(lambda: sql_ok(replica, "alice", ALICE_PW, "appdb",
                               "SELECT count(*) FROM moved") == "3")  # fmt: skip
    osc.run("database", "instance", "eject", "pg1")
    seen = _watch(trove, ident, {"EJECT"}, lambda i: True)
    assert seen <= {"EJECT", "ACTIVE"} and _went_through(platform, token, "FAILOVER"), seen
    ejected = trove.get(f"instances/{ident}")["instance"]
    # pg1-r2 is the primary now and bears pg1's id and name; a new replica takes the place
    # of the fenced former primary
    assert trove.instance("pg1-r2") is None and "replica_of" not in ejected
    [new] = ejected["replicas"]
    assert trove.wait_instance(new["id"], timeout=900) is not None
    assert (ejected["hostname"], ejected["port"]) == (moved["hostname"], moved["port"])
    assert sql_ok(ejected, "alice", ALICE_PW, "appdb", "SELECT count(*) FROM moved") == "3"
    sql_ok(ejected, "alice", ALICE_PW, "appdb", "INSERT INTO moved VALUES (4)")  # writable
    trove.call("DELETE", f"instances/{new['id']}", expect=202)
    assert trove.wait_instance(new["id"], until="DELETED", timeout=300) is None


def test_root_logs_limits_and_quotas_through_the_cli(
    platform: Platform, project: dict[str, Any], osc: OpenStack, pg1: dict[str, Any]
) -> None:
    """``openstack database root enable|show|disable``: the database's admin user with a new
    password, which psql logs in with (no superuser: the platform keeps that); ``log
    list|show``: the engine's own log, read from the agent; ``limit list`` and ``quota show``:
    the project's quotas, as ``onep quota`` sets them."""
    shown = osc.json("database", "instance", "show", "pg1")
    root = osc.json("database", "root", "enable", "pg1")
    who = "SELECT current_user, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
    assert sql_ok(shown, root["name"], root["password"], "appdb", who) == f"{root['name']}|f|t"
    again = osc.json("database", "root", "enable", "pg1", "--root_password", "Chosen-pass-9")
    assert (again["name"], again["password"]) == (root["name"], "Chosen-pass-9")
    assert refused(shown, root["name"], root["password"], "appdb")  # the former one is out
    assert sql_ok(shown, root["name"], "Chosen-pass-9", "appdb", "SELECT 1") == "1"
    assert osc.json("database", "root", "show", "pg1") == {"is_root_enabled": True}
    off = osc.run("database", "root", "disable", "pg1", check=False)
    assert off.returncode != 0 and "HTTP 501" in off.stderr, off.stderr

    [log] = osc.json("database", "log", "list", "pg1")
    assert (log["Name"], log["Type"], log["Status"]) == ("engine", "SYS", "Ready"), log
    assert log["Pending"] > 0
    assert osc.json("database", "log", "show", "pg1", "engine")["status"] == "Ready"

    platform.run("quota", "set", PROJECT, "--databases", "3", "--backups", "20")
    limits = osc.run("database", "limit", "list").stdout
    assert re.search(r"\| max_instances +\| 3 +\|", limits), limits  # the absolute ones
    quotas = {
        q["Resource"]: q for q in osc.json("database", "quota", "show", project["project"]["id"])
    }
    assert (quotas["instances"]["Limit"], quotas["instances"]["In Use"]) == (3, 1), quotas
    assert quotas["backups"]["Limit"] == 20 and quotas["volumes"]["Limit"] == -1


def test_delete_ends_in_not_found(osc: OpenStack, pg1: dict[str, Any]) -> None:
    osc.run("database", "instance", "delete", "pg1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        shown = osc.run("database", "instance", "show", "pg1", "-f", "json", check=False)
        if shown.returncode != 0:
            assert "pg1" in shown.stderr, shown.stderr
            break
        assert json.loads(shown.stdout)["status"] == "SHUTDOWN", shown.stdout
        time.sleep(2)
    else:
        raise AssertionError("pg1 was not deleted")
    assert osc.json("database", "instance", "list") == []
