"""Databases as a service end to end: `onep db` against the real Podman and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Platform, podman_containers

pytestmark = pytest.mark.e2e
ALICE_PW = "Alice-pw-7c1e9b"


def _connect(endpoint: dict[str, Any], user: str, password: str, dbname: str) -> psycopg.Connection:
    return psycopg.connect(
        host=endpoint["host"],
        port=endpoint["port"],
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=10,
        autocommit=True,
    )


@pytest.fixture(scope="module")
def pgdb(platform: Platform) -> Iterator[dict[str, Any]]:
    db = platform.json(
        "db",
        "create",
        "pgc",
        "--datastore",
        "postgresql",
        "--version",
        "15",
        "--flavor",
        "container.small",
        "--size-gb",
        "1",
        "--database",
        "appdb",
        "--user",
        f"alice:{ALICE_PW}",
        "--wait",
    )
    yield db
    platform.run("db", "delete", "pgc", "--wait", check=False)


def test_create_gives_an_endpoint_and_working_credentials(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    assert pgdb["status"] == "ACTIVE" and pgdb["health"] == "HEALTHY"
    assert pgdb["datastore"] == "postgresql" and pgdb["version"] == "15"
    assert pgdb["flavor"] == "container.small" and pgdb["compute_type"] == "container"
    endpoint = pgdb["endpoint"]
    assert endpoint["host"] == "127.0.0.1" and endpoint["port"] > 0
    creds = platform.json("db", "credentials", "pgc")
    assert set(creds) == {"username", "password"} and len(creds["password"]) >= 24
    with _connect(endpoint, creds["username"], creds["password"], "postgres") as c:
        assert c.execute(
            "SELECT current_setting('server_version_num')::int / 10000"
        ).fetchone() == (15,)
        # engine settings are sized from the flavor (container.small: 512 MB -> 128MB)
        assert c.execute("SHOW shared_buffers").fetchone() == ("128MB",)
        # the tenant's admin is no superuser: no shell, no server files, no ALTER SYSTEM
        assert c.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        for escape in ("COPY (SELECT 1) TO PROGRAM 'id'", "SELECT pg_read_file('/etc/passwd')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(escape)
    out = subprocess.run(
        [
            "psql",
            "-h",
            endpoint["host"],
            "-p",
            str(endpoint["port"]),
            "-U",
            "alice",
            "-d",
            "appdb",
            "-tAc",
            "SELECT current_user",
        ],
        env={"PGPASSWORD": ALICE_PW, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "alice", out.stderr
    # the compute instance behind it is the service's, not shown as the user's own
    assert platform.json("instance", "list") == []


def test_initial_user_can_create_and_use_tables(pgdb: dict[str, Any]) -> None:
    with _connect(pgdb["endpoint"], "alice", ALICE_PW, "appdb") as c:
        c.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        c.execute("INSERT INTO notes (body) VALUES ('kept')")
        assert c.execute("SELECT body FROM notes").fetchall() == [("kept",)]


def test_databases_users_and_grants_behave_as_postgresql(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    endpoint = pgdb["endpoint"]
    platform.run("db", "database", "create", "pgc", "reports")
    names = [d["name"] for d in platform.json("db", "database", "list", "pgc")]
    assert names == ["appdb", "reports"]

    created = platform.json("db", "user", "create", "pgc", "bob")  # password generated
    bob_pw = created["password"]
    assert len(bob_pw) >= 24 and created["user"]["databases"] == []
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        _connect(endpoint, "bob", bob_pw, "reports")

    granted = platform.json("db", "user", "grant", "pgc", "bob", "reports")
    assert granted["databases"] == ["reports"]
    with _connect(endpoint, "bob", bob_pw, "reports") as c:
        c.execute("CREATE TABLE t (x int)")  # PostgreSQL 15: needs CREATE on schema public
        c.execute("INSERT INTO t VALUES (42)")
        assert c.execute("SELECT x FROM t").fetchone() == (42,)
    users = {u["name"]: u["databases"] for u in platform.json("db", "user", "list", "pgc")}
    assert users == {"alice": ["appdb"], "bob": ["reports"]}

    platform.run("db", "user", "revoke", "pgc", "bob", "reports")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        _connect(endpoint, "bob", bob_pw, "reports")

    changed = platform.json("db", "user", "password", "pgc", "bob", "--password", "Bob-new-pw-99")
    assert changed == {"username": "bob", "password": "Bob-new-pw-99"}
    platform.run("db", "user", "grant", "pgc", "bob", "reports")
    with _connect(endpoint, "bob", "Bob-new-pw-99", "reports") as c:
        assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)

    platform.run("db", "user", "delete", "pgc", "bob")
    assert "bob" not in {u["name"] for u in platform.json("db", "user", "list", "pgc")}
    admin = platform.json("db", "credentials", "pgc")
    with _connect(endpoint, admin["username"], admin["password"], "reports") as c:
        # bob's table was handed to the admin, not dropped
        assert c.execute("SELECT x FROM t").fetchone() == (42,)

    platform.run("db", "database", "delete", "pgc", "reports")
    assert [d["name"] for d in platform.json("db", "database", "list", "pgc")] == ["appdb"]


@pytest.mark.parametrize("evil", ['x"; DROP DATABASE appdb; --', "Robert'); DROP", "pg_x", "a b"])
def test_hostile_names_are_refused(platform: Platform, pgdb: dict[str, Any], evil: str) -> None:
    for args in (
        ["db", "database", "create", "pgc", evil],
        ["db", "user", "create", "pgc", evil, "--password", "Whatever-123"],
    ):
        out = platform.run(*args, check=False)
        assert out.returncode == 1 and "invalid_input" in out.stderr, out.stderr
    assert "appdb" in [d["name"] for d in platform.json("db", "database", "list", "pgc")]


def test_restart_keeps_data_and_reports_health(platform: Platform, pgdb: dict[str, Any]) -> None:
    restarted = platform.json("db", "restart", "pgc", "--wait")
    assert restarted["status"] == "ACTIVE" and restarted["health"] == "HEALTHY"
    with _connect(pgdb["endpoint"], "alice", ALICE_PW, "appdb") as c:
        assert c.execute("SELECT body FROM notes").fetchall() == [("kept",)]
    # the engine's own log, kept across its restarts by the agent: both starts are there
    logged = platform.run("db", "logs", "pgc", "--tail", "5000").stdout
    assert logged.count("database system is ready to accept connections") >= 2, logged[-3000:]


# -- configuration groups: every value read back with SHOW over the endpoint -------------------
GROUP = "pgtuned"


def _show(platform: Platform, db: dict[str, Any], setting: str) -> str:
    """``SHOW setting`` through the database's endpoint, as its admin."""
    creds = platform.json("db", "credentials", db["name"])
    with _connect(db["endpoint"], creds["username"], creds["password"], "postgres") as c:
        row = c.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def _refused(platform: Platform, *args: str) -> str:
    """What the CLI says when the platform refuses ``args`` (it must exit non-zero)."""
    proc = platform.run(*args, check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr + proc.stdout


def test_a_group_is_checked_against_the_engines_catalog(platform: Platform) -> None:
    for bad, code in (
        ("no_such_parameter=1", "config_parameter_unknown"),
        ("port=6543", "config_parameter_owned"),
        ("max_connections=0", "config_value_out_of_range"),
        ("max_connections=many", "config_value_invalid"),
        ("work_mem=8XB", "config_value_invalid"),
    ):
        said = _refused(
            platform, "db", "config", "create", "bad", "--datastore", "postgresql",
            "--version", "15", "--set", bad,
        )  # fmt: skip
        assert code in said, said
    assert platform.json("db", "config", "list") == []  # nothing half-made
    group = platform.json(
        "db", "config", "create", GROUP, "--datastore", "postgresql", "--version", "15",
        "--set", "max_connections=200", "--set", "work_mem=8MB",
        "--description", "more connections",
    )  # fmt: skip
    assert (group["datastore"], group["version"]) == ("postgresql", "15")
    assert group["values"] == {"max_connections": "200", "work_mem": "8MB"}
    assert group["instances"] == []
    params = {p["name"]: p for p in platform.json("db", "config", "parameters")}
    assert params["max_connections"]["restart_required"] is True
    assert params["work_mem"]["restart_required"] is False
    assert "port" not in params  # the platform's own


def test_attach_applies_live_what_it_can_and_restart_applies_the_rest(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    before = _show(platform, pgdb, "max_connections")
    assert before != "200" and _show(platform, pgdb, "work_mem") != "8MB"

    attached = platform.json("db", "config", "attach", "pgc", GROUP)
    assert attached["configuration"] == GROUP and attached["restart_required"] is True
    assert _show(platform, pgdb, "work_mem") == "8MB"  # a reload applies it
    assert _show(platform, pgdb, "max_connections") == before  # the postmaster's: not yet
    shown = platform.json("db", "show", "pgc")
    assert (shown["configuration"], shown["restart_required"]) == (GROUP, True)
    group = platform.json("db", "config", "show", GROUP)
    assert [(i["name"], i["restart_required"]) for i in group["instances"]] == [("pgc", True)]
    said = _refused(platform, "db", "config", "delete", GROUP)
    assert "configuration_in_use" in said, said

    platform.run("db", "restart", "pgc", "--wait")
    shown = platform.json("db", "show", "pgc")
    assert (shown["status"], shown["restart_required"]) == ("ACTIVE", False)
    assert _show(platform, pgdb, "max_connections") == "200"
    assert _show(platform, pgdb, "work_mem") == "8MB"  # kept across the restart


def test_an_update_reaches_the_databases_using_the_group(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    group = platform.json("db", "config", "update", GROUP, "--set", "work_mem=16MB")
    assert group["values"] == {"max_connections": "200", "work_mem": "16MB"}
    assert _show(platform, pgdb, "work_mem") == "16MB"
    assert platform.json("db", "show", "pgc")["restart_required"] is False


def test_detach_goes_back_to_the_platforms_settings(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    detached = platform.json("db", "config", "detach", "pgc")
    assert detached["configuration"] is None and detached["restart_required"] is True
    assert _show(platform, pgdb, "work_mem") == "4MB"  # container.small's, at once
    platform.run("db", "restart", "pgc", "--wait")
    assert _show(platform, pgdb, "max_connections") != "200"
    platform.run("db", "config", "delete", GROUP)
    assert platform.json("db", "config", "list") == []


def test_storage_grows_with_the_data_kept_and_never_shrinks(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    """A container's volume size is a record, not a limit: the growth records it (and
    the room on its host) and the data stays; the guest reports the storage it sees."""
    grown = platform.json("db", "resize", "pgc", "--size-gb", "2", "--wait")
    assert (grown["status"], grown["size_gb"], grown["status_message"]) == ("ACTIVE", 2, "")
    assert grown["storage"] is not None and grown["storage"]["total_bytes"] > 0
    with _connect(pgdb["endpoint"], "alice", ALICE_PW, "appdb") as c:
        assert c.execute("SELECT body FROM notes").fetchall() == [("kept",)]
        c.execute("INSERT INTO notes (body) VALUES ('after growth')")
    for size, code in (("1", "storage_cannot_shrink"), ("2", "same_size")):
        refused = platform.run("db", "resize", "pgc", "--size-gb", size, check=False)
        assert refused.returncode == 1 and code in refused.stderr, refused.stderr
    shown = platform.json("db", "show", "pgc")
    assert (shown["status"], shown["size_gb"]) == ("ACTIVE", 2)
    ops = [o for o in platform.json("operation", "list") if o["kind"] == "db.storage.grow"]
    assert [o["status"] for o in ops] == ["SUCCEEDED"]


def test_reset_admin_password(platform: Platform, pgdb: dict[str, Any]) -> None:
    old = platform.json("db", "credentials", "pgc")
    new = platform.json("db", "reset-password", "pgc")
    assert new["password"] != old["password"]
    assert platform.json("db", "credentials", "pgc") == new
    with _connect(pgdb["endpoint"], new["username"], new["password"], "postgres") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(pgdb["endpoint"], old["username"], old["password"], "postgres")


def test_another_project_cannot_see_the_database(platform: Platform, pgdb: dict[str, Any]) -> None:
    token = platform.json("project", "create", "dbtenant")["token"]
    assert platform.json("db", "list", ONEP_TOKEN=token) == []
    for args in (
        ["show", "pgc"],
        ["credentials", "pgc"],
        ["restart", "pgc"],
        ["database", "list", "pgc"],
        ["user", "list", "pgc"],
        ["logs", "pgc"],
        ["events", "pgc"],
        ["delete", "pgc"],
    ):
        out = platform.run("db", *args, check=False, ONEP_TOKEN=token)
        assert out.returncode == 1 and "db_instance_not_found" in out.stderr, out.stderr


def test_metrics_show_what_the_engine_counts(platform: Platform, pgdb: dict[str, Any]) -> None:
    m = platform.engine_metrics("pgc")
    assert m.get("onep_db_connections", -1) >= 0, m
    assert m["onep_db_transactions_total"] > 0 and m["onep_db_size_bytes"] > 1_000_000, m
    assert 0 < m["onep_db_cache_hit_ratio"] <= 1, m


def test_a_quota_is_set_shown_and_enforced_through_the_cli(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    token = platform.json("project", "create", "quotaed")["token"]
    shown = platform.json(
        "quota", "set", "quotaed", "--databases", "0", "--vcpus", "4", "--ram-mb", "unlimited"
    )
    assert shown["quota"]["databases"] == {"limit": 0, "used": 0}
    assert shown["quota"]["vcpus"]["limit"] == 4 and shown["quota"]["ram_mb"]["limit"] is None
    assert platform.json("quota", "show", ONEP_TOKEN=token)["project"]["name"] == "quotaed"
    refused = platform.run(
        "db", "create", "pgq", "--flavor", "container.small", check=False, ONEP_TOKEN=token
    )
    assert refused.returncode == 1 and "quota_exceeded" in refused.stderr, refused.stderr
    assert "databases" in refused.stderr
    assert platform.json("db", "list", ONEP_TOKEN=token) == []
    bad = platform.run("quota", "set", "quotaed", "--vcpus", "many", check=False)
    assert bad.returncode == 2 and "unlimited" in bad.stderr
    member = platform.run("quota", "set", "quotaed", "--vcpus", "9", check=False, ONEP_TOKEN=token)
    assert member.returncode == 1 and "admin_required" in member.stderr


def test_secrets_never_reach_logs_store_or_operations(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    admin_pw = platform.json("db", "credentials", "pgc")["password"]
    secrets = [admin_pw, ALICE_PW]
    raw_store = b"".join(p.read_bytes() for p in platform.home.glob("oneplatform.db*"))
    assert raw_store, "the SQLite store was not found"
    for secret in secrets:
        assert secret.encode() not in raw_store
        assert secret not in platform.log()
    # and readable columns of the store hold no plaintext either
    with sqlite3.connect(platform.home / "oneplatform.db") as conn:
        dump = "\n".join(conn.iterdump())
    for secret in secrets:
        assert secret not in dump
    ops = json.dumps(platform.json("operation", "list"))
    said = platform.run("db", "logs", "pgc", "--tail", "5000").stdout
    said += platform.run("db", "events", "pgc", "--limit", "1000", "-o", "json").stdout
    for secret in secrets:
        assert secret not in ops and secret not in said
    db_id = pgdb["id"]
    inst_logs = subprocess.run(
        ["podman", "ps", "-a", "--format", "json", "--filter", "label=oneplatform.managed=1"],
        capture_output=True,
        text=True,
    )
    for c in json.loads(inst_logs.stdout or "[]"):
        logs = subprocess.run(["podman", "logs", c["Id"]], capture_output=True, text=True)
        for secret in secrets:
            assert secret not in logs.stdout + logs.stderr
    assert db_id


def test_delete_removes_data_and_compute(platform: Platform, pgdb: dict[str, Any]) -> None:
    """Last: the module's database goes, with its container and its data volume."""
    # pgc's own compute (the other worker's platform runs containers beside this one)
    with sqlite3.connect(platform.home / "oneplatform.db") as conn:
        (instance_id,) = conn.execute(
            "SELECT instance_id FROM db_members WHERE name = 'pgc' AND deleted_at IS NULL"
        ).fetchone()
    assert instance_id in {c["Labels"]["oneplatform.instance"] for c in _managed()}
    platform.run("db", "delete", "pgc", "--wait")
    assert platform.run("db", "show", "pgc", check=False).returncode == 1
    remaining = {c["Labels"]["oneplatform.instance"] for c in _managed()}
    volumes = subprocess.run(
        ["podman", "volume", "ls", "--format", "{{.Name}}"], capture_output=True, text=True
    ).stdout.split()
    assert instance_id not in remaining
    assert not [v for v in volumes if instance_id in v]
    assert podman_containers(instance_id) == []


def _managed() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--format", "json", "--filter", "label=oneplatform.managed=1"],
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout or "[]")
