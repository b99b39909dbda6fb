"""A cluster of one bare-metal node end to end, on the emulated lab: the podman-host image's
whole disk deployed by the ramdisk, the node registered over its forwarded sshd, a
PostgreSQL database on the cluster's flavor that psql reaches, then the cluster deleted and
the node cleaned (available again, powered off).

Opt-in (ONEP_E2E_BM_CLUSTER=1, see tests/conftest.py): a deploy, an image import over SSH and
a clean under TCG take many minutes, and it needs the lab's newer forwards (guest 22 and the
1:1 block, scripts/bmlab.sh up from this branch)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import LAB_PORTS, Platform, free_port, record_timing, reset_timings
from tests.e2e.test_three_compute_types import LAB, _free_deploy_port, _require_lab, _wait_nodes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bmplatform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    _require_lab()
    ports = [n.get("ports", {}) for n in json.loads(LAB.read_text())["nodes"]]
    if not all("22" in p for p in ports):
        pytest.fail(f"the lab ({LAB}) forwards no sshd: run scripts/bmlab.sh up")
    reset_timings("bmcluster")
    p = Platform(
        home=tmp_path_factory.mktemp("onep-bmcluster"),
        port=free_port(),
        extra_env={
            **LAB_PORTS,
            "ONEP_BMLAB_FILE": str(LAB),
            "ONEP_DEPLOY_PORT": str(_free_deploy_port()),
            "ONEP_IMAGES": "postgresql-15,podman-host",
            "ONEP_BACKUPS": "false",  # TCG time (as in test_clusters)
        },
    )
    try:
        p.start()
        p.wait_images_ready()
        _wait_nodes(p, "available", timeout=1200)
        yield p
    finally:
        p.run("db", "delete", "pgb", "--wait", check=False, timeout=900)
        p.run("cluster", "delete", "b1", "--wait", check=False, timeout=1800)
        p.stop()


def _timed(p: Platform, label: str, *args: str, timeout: float) -> Any:
    started = time.monotonic()
    out = p.json(*args, timeout=timeout)
    record_timing("bmcluster", label, time.monotonic() - started)
    return out


def test_a_bare_metal_cluster_serves_a_database_then_cleans_its_node(bmplatform: Platform) -> None:
    p = bmplatform
    cluster = _timed(
        p, "cluster b1 (1 baremetal.small node): CLI call to ACTIVE",
        "cluster", "create", "b1", "--node-flavor", "baremetal.small", "--size", "1", "--wait",
        timeout=3600,
    )  # fmt: skip
    assert cluster["status"] == "ACTIVE" and cluster["node_flavor"] == "baremetal.small"
    (node,) = cluster["nodes"]
    instances = {i["name"]: i for i in p.json("instance", "list")}
    assert instances["b1-0"]["compute_type"] == "baremetal"
    taken = [n for n in p.json("node", "list") if n["state"] == "active"]
    assert len(taken) == 1, taken
    (conn,) = p.json("cluster", "connect", "b1")
    assert conn["url"] == f"ssh://root@127.0.0.1:{node['ssh_port']}/run/podman/podman.sock"

    db = _timed(
        p, "postgresql on b1.small (first: image import over SSH)",
        "db", "create", "pgb", "--datastore", "postgresql", "--flavor", "b1.small",
        "--database", "appdb", "--user", "alice:S3cret-pass", "--wait", timeout=3600,
    )  # fmt: skip
    assert db["status"] == "ACTIVE", db
    endpoint = db["endpoint"]
    out = subprocess.run(
        ["psql", "-h", endpoint["host"], "-p", str(endpoint["port"]), "-U", "alice",
         "-d", "appdb", "-tAc", "SELECT current_user"],
        env={"PGPASSWORD": "S3cret-pass", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "alice", out.stderr

    p.run("db", "delete", "pgb", "--wait", timeout=900)
    started = time.monotonic()
    p.run("cluster", "delete", "b1", "--wait", timeout=1800)
    record_timing("bmcluster", "delete b1 (node cleaned)", time.monotonic() - started)
    assert p.json("cluster", "list") == []
    nodes = _wait_nodes(p, "available", timeout=1200)  # cleaned for the next tenant
    assert all(n["power_state"] == "stopped" for n in nodes.values()), nodes
