"""Bare metal end to end: emulated nodes behind the Redfish emulator (the BMC test double),
enrolled, deployed by virtual media with a whole-disk image, cleaned on delete."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Platform, free_port

pytestmark = pytest.mark.e2e
LAB = Path("/var/lib/oneplatform/bmlab/nodes.json")
ALICE_PW = "Alice-bm-pw-42"


def _require_lab() -> None:
    if LAB.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the bare-metal lab is missing ({LAB}): run scripts/bmlab.sh up")
    pytest.skip("the bare-metal lab is not set up (scripts/bmlab.sh up)")


def _nodes(p: Platform) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in p.json("node", "list")}


def _wait_nodes(p: Platform, state: str, timeout: float = 600) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = _nodes(p)
        if nodes and all(n["state"] == state for n in nodes.values()):
            return nodes
        assert not any("failed" in n["state"] for n in nodes.values()), nodes
        assert time.monotonic() < deadline, nodes
        time.sleep(2)


@pytest.fixture(scope="module")
def bm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    _require_lab()
    p = Platform(
        home=tmp_path_factory.mktemp("onep-bm"),
        port=free_port(),
        extra_env={"ONEP_BMLAB_FILE": str(LAB)},
    )
    p.start()
    try:
        p.wait_images_ready()
        yield p
    finally:
        p.stop()


def test_enrolled_nodes_become_available(bm: Platform) -> None:
    nodes = _wait_nodes(bm, "available")
    assert set(nodes) >= {"onep-bm-0", "onep-bm-1"}
    for node in nodes.values():
        assert node["pool"] == "baremetal" and node["instance"] is None
        assert node["power_state"] in ("stopped", "running")
        inventory = bm.json("node", "show", node["name"])["inventory"]
        assert inventory["cpus"] >= 1 and inventory["memory_mb"] >= 1024
        assert inventory["disks"] and "cd" in [t.lower() for t in inventory["virtual_media_types"]]
    on = bm.json("node", "power", "on", "onep-bm-1")
    assert on["power_state"] == "running"
    off = bm.json("node", "power", "off", "onep-bm-1")
    assert off["power_state"] == "stopped" and off["state"] == "available"
    types = {t["name"]: t for t in bm.json("compute-type", "list")}
    caps = {c["name"]: c for c in types["baremetal"]["capabilities"]}
    for name in ("boot_device", "virtual_media", "forced_reboot"):
        assert caps[name]["supported"] is True
    for name in ("snapshot", "resize", "exec"):
        assert caps[name]["supported"] is False and caps[name]["reason"]


def test_postgresql_on_bare_metal_then_cleaned(bm: Platform) -> None:
    _wait_nodes(bm, "available")
    db = bm.json(
        "db",
        "create",
        "pgbm",
        "--datastore",
        "postgresql",
        "--flavor",
        "baremetal.small",
        "--database",
        "appdb",
        "--user",
        f"alice:{ALICE_PW}",
        "--wait",
        timeout=1500,
    )
    try:
        assert db["status"] == "ACTIVE" and db["compute_type"] == "baremetal"
        endpoint = db["endpoint"]
        with psycopg.connect(
            host=endpoint["host"],
            port=endpoint["port"],
            user="alice",
            password=ALICE_PW,
            dbname="appdb",
            connect_timeout=10,
            autocommit=True,
        ) as c:
            c.execute("CREATE TABLE t (x int)")
            c.execute("INSERT INTO t VALUES (1)")
            assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)
        admin = bm.json("db", "credentials", "pgbm")
        with psycopg.connect(
            host=endpoint["host"],
            port=endpoint["port"],
            user=admin["username"],
            password=admin["password"],
            dbname="postgres",
            connect_timeout=10,
            autocommit=True,
        ) as c:
            # the engine's data lives on the data mount the node's init made
            (data_dir,) = c.execute("SHOW data_directory").fetchone()
            assert data_dir.startswith("/var/lib/oneplatform/")
        nodes = _nodes(bm)
        active = [n for n in nodes.values() if n["state"] == "active"]
        assert len(active) == 1 and active[0]["power_state"] == "running"
        bob = bm.json("db", "user", "create", "pgbm", "bob", "--database", "appdb")
        assert bob["user"]["databases"] == ["appdb"]
        bm.run("db", "database", "create", "pgbm", "reports")
        assert [d["name"] for d in bm.json("db", "database", "list", "pgbm")] == [
            "appdb",
            "reports",
        ]
        restarted = bm.json("db", "restart", "pgbm", "--wait", timeout=600)
        assert restarted["status"] == "ACTIVE" and restarted["health"] == "HEALTHY"
        with psycopg.connect(
            host=endpoint["host"],
            port=endpoint["port"],
            user="alice",
            password=ALICE_PW,
            dbname="appdb",
            connect_timeout=10,
        ) as c:
            assert c.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        bm.run("db", "delete", "pgbm", "--wait", timeout=900, check=False)
    nodes = _wait_nodes(bm, "available", timeout=300)
    assert all(n["instance"] is None for n in nodes.values())


def test_a_deploy_killed_mid_way_resumes(bm: Platform) -> None:
    """kill -9 after the ramdisk was booted but before the step was recorded; restart."""
    _wait_nodes(bm, "available")
    bm.stop()
    bm.start(ONEP_FAILPOINT="instance.create.baremetal:boot_ramdisk")
    accepted = bm.json(
        "instance", "create", "bm1", "--flavor", "baremetal.small", "--image", "postgresql-15"
    )
    deadline = time.monotonic() + 300
    while "FAILPOINT instance.create.baremetal:boot_ramdisk" not in bm.log():
        assert time.monotonic() < deadline, bm.log()[-2000:]
        time.sleep(1)
    bm.kill()
    bm.start()  # no failpoint: the deploy resumes at boot_ramdisk and goes on
    deleted = False
    try:
        deadline = time.monotonic() + 900
        while (op := bm.json("operation", "show", accepted["id"]))["status"] not in (
            "SUCCEEDED",
            "FAILED",
        ):
            assert time.monotonic() < deadline, op
            time.sleep(3)
        assert op["status"] == "SUCCEEDED", op
        inst = bm.json("instance", "show", "bm1")
        assert inst["status"] == "ACTIVE" and inst["compute_type"] == "baremetal"
        active = [n for n in _nodes(bm).values() if n["state"] == "active"]
        assert [n["instance"] for n in active] == ["bm1"]
        # `--wait` on a bare-metal delete exits 0 and says so (it once compared kind names)
        out = bm.run("instance", "delete", "bm1", "--wait", timeout=900)
        assert "deleted bm1" in out.stdout
        deleted = True
    finally:
        if not deleted:
            bm.run("instance", "delete", "bm1", "--wait", timeout=900, check=False)
    _wait_nodes(bm, "available", timeout=300)
