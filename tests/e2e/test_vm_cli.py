"""The VM compute type end to end: real libvirt/QEMU (TCG here), driven through the CLI."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e
ALICE_PW = "Alice-vm-pw-31"


def _domains() -> set[str]:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _dumpxml(instance_id: str) -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", f"onep-{instance_id}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def _connect(endpoint: dict[str, Any], user: str, password: str, dbname: str) -> Any:
    return psycopg.connect(
        host=endpoint["host"],
        port=endpoint["port"],
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=10,
        autocommit=True,
    )


def test_vm_capabilities_are_served(platform: Platform) -> None:
    types = {t["name"]: t for t in platform.json("compute-type", "list")}
    caps = {c["name"]: c for c in types["vm"]["capabilities"]}
    for name in ("snapshot", "resize", "forced_reboot"):
        assert caps[name]["supported"] is True, name
    assert caps["exec"]["supported"] is False and caps["exec"]["reason"]
    flavors = {f["name"]: f for f in platform.json("flavor", "list")}
    assert flavors["vm.small"]["compute_type"] == "vm"
    assert "vms" in [p["name"] for p in platform.json("pool", "list")]


def _domain_of(platform: Platform, db_name: str) -> str:
    """The libvirt domain behind a database instance (its compute instance is hidden)."""
    with sqlite3.connect(platform.home / "oneplatform.db") as conn:
        (instance_id,) = conn.execute(
            "SELECT instance_id FROM db_instances WHERE name = ? AND deleted_at IS NULL",
            (db_name,),
        ).fetchone()
    return f"onep-{instance_id}"


def test_postgresql_database_on_a_vm(platform: Platform) -> None:
    db = platform.json(
        "db",
        "create",
        "pgvm",
        "--datastore",
        "postgresql",
        "--flavor",
        "vm.small",
        "--database",
        "appdb",
        "--user",
        f"alice:{ALICE_PW}",
        "--wait",
        timeout=1200,
    )
    try:
        assert db["status"] == "ACTIVE" and db["health"] == "HEALTHY"
        assert db["compute_type"] == "vm" and db["flavor"] == "vm.small"
        domain = _domain_of(platform, "pgvm")
        assert domain in _domains()
        endpoint = db["endpoint"]
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
                "CREATE TABLE t (x int); INSERT INTO t VALUES (7); SELECT x FROM t",
            ],
            env={"PGPASSWORD": ALICE_PW, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and out.stdout.strip().endswith("7"), out.stderr
        creds = platform.json("db", "credentials", "pgvm")
        with _connect(endpoint, creds["username"], creds["password"], "postgres") as c:
            assert c.execute("SHOW shared_buffers").fetchone() == ("256MB",)  # 1024 MB / 4

        platform.run("db", "database", "create", "pgvm", "reports")
        bob = platform.json("db", "user", "create", "pgvm", "bob", "--database", "reports")
        with _connect(endpoint, "bob", bob["password"], "reports") as c:
            c.execute("CREATE TABLE r (y int)")
        assert {u["name"] for u in platform.json("db", "user", "list", "pgvm")} == {"alice", "bob"}

        restarted = platform.json("db", "restart", "pgvm", "--wait", timeout=600)
        assert restarted["status"] == "ACTIVE"
        with _connect(endpoint, "alice", ALICE_PW, "appdb") as c:
            assert c.execute("SELECT x FROM t").fetchone() == (7,)
    finally:
        platform.run("db", "delete", "pgvm", "--wait", timeout=600, check=False)
    assert domain not in _domains()
    assert platform.json("db", "list") == []


def test_plain_vm_instance_lifecycle(platform: Platform) -> None:
    inst = platform.json(
        "instance",
        "create",
        "vm1",
        "--flavor",
        "vm.small",
        "--image",
        "postgresql-15",
        "--wait",
        timeout=900,
    )
    try:
        assert inst["status"] == "ACTIVE" and inst["compute_type"] == "vm"
        refused = platform.run("instance", "exec", "vm1", "--", "true", check=False)
        assert refused.returncode == 1 and "capability_not_supported" in refused.stderr
        snap = platform.json("instance", "snapshot", "vm1", "snap1", "--wait", timeout=600)
        assert snap["status"] == "ACTIVE"
        stopped = platform.json("instance", "stop", "vm1", "--wait", timeout=600)
        assert stopped["status"] == "SHUTOFF" and stopped["power_state"] == "stopped"
        started = platform.json("instance", "start", "vm1", "--wait", timeout=600)
        assert started["status"] == "ACTIVE"
        resized = platform.json(
            "instance", "resize", "vm1", "--flavor", "vm.medium", "--wait", timeout=600
        )
        assert (resized["status"], resized["flavor"]) == ("ACTIVE", "vm.medium")
        assert re.search(r"<vcpu[^>]*>2</vcpu>", _dumpxml(inst["id"]))
        reset = platform.json("instance", "reboot", "vm1", "--force", "--wait", timeout=600)
        assert reset["status"] == "ACTIVE"
        # Enough lines to hold a boot's first line: read just after the reset, the last 200
        # can all be the new boot's first second, after its "Linux version" line.
        console = platform.run("instance", "console", "vm1", "--tail", "5000").stdout
        assert "Linux version" in console or "oneplatform" in console.lower()
    finally:
        platform.run("instance", "delete", "vm1", "--wait", timeout=600, check=False)
    assert platform.json("instance", "list") == []
