"""Clusters end to end: a container pool composed from the platform's own VMs (TCG here),
serving a PostgreSQL database, reached with Podman's own CLI, grown by a resize, driven
through the CLI. One cluster of one node grown to two, then shrunk back by draining the
first (its database moves to the other through the replication hub): a node is a TCG VM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneplatform.clusters.keys import new_private_key, public_key_of
from tests.e2e.conftest import LAB_PORTS, Platform, own_platform, record_timing, reset_timings

pytestmark = pytest.mark.e2e

# A platform of its own on the lab worker's ports (tests/conftest.py: OWN_GROUPS), without
# repositories for new databases (TCG time; the node's forward of the host services is shown
# by the move, through the replication hub).
CLUSTER_ENV = {**LAB_PORTS, "ONEP_IMAGES": "postgresql-15,podman-host", "ONEP_BACKUPS": "false"}


@pytest.fixture(scope="module")
def cplatform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    if shutil.which("virsh") is None or shutil.which("podman") is None:
        pytest.skip("libvirt or podman is not installed")
    with own_platform(tmp_path_factory, "onep-clusters", **CLUSTER_ENV) as p:
        try:
            yield p
        finally:
            for db in p.json("db", "list"):
                p.run("db", "delete", db["name"], "--wait", check=False)
            p.run("cluster", "delete", "c1", "--wait", check=False, timeout=900)


@pytest.fixture(scope="module")
def cluster(cplatform: Platform) -> dict[str, Any]:
    reset_timings("cluster")
    started = time.monotonic()
    out = cplatform.json(
        "cluster", "create", "c1", "--node-flavor", "vm.small", "--size", "1", "--wait",
        timeout=3600,
    )  # fmt: skip
    record_timing(
        "cluster", "cluster c1 (1 vm.small node): CLI call to ACTIVE", time.monotonic() - started
    )
    return dict(out)


def _podman(conn: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """Podman's own CLI as the owner runs it, trusting only the host key `connect` gave
    (Podman's client reads $HOME/.ssh/known_hosts)."""
    home = Path(tempfile.mkdtemp(prefix="onep-owner-"))
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(conn["known_hosts"] + "\n")
    try:
        return subprocess.run(
            ["podman", "--url", conn["url"], "--identity", conn["identity_file"], *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HOME": str(home)},
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_create_registers_the_nodes_as_the_owners_pool(
    cplatform: Platform, cluster: dict[str, Any]
) -> None:
    assert cluster["status"] == "ACTIVE" and cluster["flavor"] == "c1.small"
    (node,) = cluster["nodes"]
    assert node["status"] == "ACTIVE" and node["host"] == "c1-0"
    # the node is an instance of the owner's project, built from the podman-host image
    instances = {i["name"]: i for i in cplatform.json("instance", "list")}
    assert instances["c1-0"]["compute_type"] == "vm" and instances["c1-0"]["status"] == "ACTIVE"
    flavors = {f["name"]: f for f in cplatform.json("flavor", "list")}
    assert flavors["c1.small"]["compute_type"] == "container"
    hosts = {h["name"]: h for h in cplatform.json("host", "list")}
    assert hosts["c1-0"]["pool"] == "c1" and hosts["c1-0"]["ram_mb"] > 0


def test_connect_gives_each_nodes_podman(cplatform: Platform, cluster: dict[str, Any]) -> None:
    (conn,) = cplatform.json("cluster", "connect", "c1")
    assert conn["node"] == "c1-0" and conn["url"].startswith("ssh://root@127.0.0.1:")
    info = _podman(conn, "info", "--format", "{{.Host.CgroupsVersion}}")
    assert info.returncode == 0 and info.stdout.strip() == "v2", info.stderr
    # the node presents the host key the platform made for it: Podman, trusting another key
    # for that address, refuses to connect
    other = public_key_of(new_private_key(), "other").split()
    name = conn["known_hosts"].split()[0]
    wrong = _podman({**conn, "known_hosts": f"{name} {other[0]} {other[1]}"}, "info")
    assert wrong.returncode != 0 and "key" in wrong.stderr.lower(), wrong.stderr


def test_another_project_sees_neither_the_cluster_nor_its_flavor(
    cplatform: Platform, cluster: dict[str, Any]
) -> None:
    token = cplatform.json("project", "create", "outsider")["token"]
    assert cplatform.json("cluster", "list", ONEP_TOKEN=token) == []
    assert "c1.small" not in {f["name"] for f in cplatform.json("flavor", "list", ONEP_TOKEN=token)}
    for args in (
        ["cluster", "show", "c1"],
        ["cluster", "connect", "c1"],
        ["cluster", "delete", "c1"],
    ):
        out = cplatform.run(*args, check=False, ONEP_TOKEN=token)
        assert out.returncode == 1 and "cluster_not_found" in out.stderr, out.stderr
    out = cplatform.run(
        "db", "create", "sneak", "--datastore", "postgresql", "--flavor", "c1.small",
        check=False, ONEP_TOKEN=token,
    )  # fmt: skip
    assert out.returncode == 1 and "flavor_not_found" in out.stderr, out.stderr


def _psql(endpoint: dict[str, Any], sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-h", endpoint["host"], "-p", str(endpoint["port"]), "-U", "alice",
         "-d", "appdb", "-tAc", sql],
        env={"PGPASSWORD": "S3cret-pass", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _assert_lists_the_platforms_container(cplatform: Platform) -> None:
    """`podman --url` of the cluster's one node, as `connect` gives it, lists a container
    the platform runs there."""
    (conn,) = cplatform.json("cluster", "connect", "c1")
    listed = _podman(conn, "ps", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    labels = [c.get("Labels") or {} for c in json.loads(listed.stdout)]
    assert any(label.get("oneplatform.managed") == "1" for label in labels), listed.stdout


def test_a_database_on_the_cluster_serves_psql_and_its_container_is_listed(
    cplatform: Platform, cluster: dict[str, Any]
) -> None:
    started = time.monotonic()
    db = cplatform.json(
        "db", "create", "pgk", "--datastore", "postgresql", "--flavor", "c1.small",
        "--database", "appdb", "--user", "alice:S3cret-pass", "--wait", timeout=1800,
    )  # fmt: skip
    record_timing(
        "cluster",
        "postgresql on c1.small (first; its image preloaded on the node)",
        time.monotonic() - started,
    )
    assert db["status"] == "ACTIVE" and db["flavor"] == "c1.small"
    endpoint = db["endpoint"]
    out = _psql(endpoint, "SELECT current_user")
    assert out.returncode == 0 and out.stdout.strip() == "alice", out.stderr
    _assert_lists_the_platforms_container(cplatform)


def test_delete_is_refused_while_a_database_lives_on_it(
    cplatform: Platform, cluster: dict[str, Any]
) -> None:
    out = cplatform.run("cluster", "delete", "c1", check=False)
    assert out.returncode == 1 and "cluster_in_use" in out.stderr, out.stderr
    assert "database pgk" in out.stderr, out.stderr
    assert cplatform.json("cluster", "show", "c1")["status"] == "ACTIVE"


def test_resize_adds_a_node(cplatform: Platform, cluster: dict[str, Any]) -> None:
    started = time.monotonic()
    grown = cplatform.json("cluster", "resize", "c1", "--size", "2", "--wait", timeout=1800)
    record_timing("cluster", "resize c1 to 2 nodes: CLI call to ACTIVE", time.monotonic() - started)
    assert grown["status"] == "ACTIVE" and grown["size"] == 2
    assert [n["status"] for n in grown["nodes"]] == ["ACTIVE", "ACTIVE"]
    conns = cplatform.json("cluster", "connect", "c1")
    assert [c["node"] for c in conns] == ["c1-0", "c1-1"]
    assert _podman(conns[1], "ps").returncode == 0


def test_a_shrink_moves_the_database_to_the_node_that_stays(
    cplatform: Platform, cluster: dict[str, Any]
) -> None:
    before = cplatform.json("db", "show", "pgk")
    wrote = _psql(before["endpoint"], "CREATE TABLE kept AS SELECT 42 AS answer")
    assert wrote.returncode == 0, wrote.stderr
    started = time.monotonic()
    shrunk = cplatform.json(
        "cluster", "resize", "c1", "--size", "1", "--remove", "c1-0", "--wait", timeout=3600
    )
    record_timing(
        "cluster",
        "shrink c1 to 1 node, pgk moved off c1-0: CLI call to ACTIVE",
        time.monotonic() - started,
    )
    assert shrunk["status"] == "ACTIVE" and [n["name"] for n in shrunk["nodes"]] == ["c1-1"]
    after = cplatform.json("db", "show", "pgk")
    assert after["status"] == "ACTIVE" and after["endpoint"] == before["endpoint"]
    read = _psql(after["endpoint"], "SELECT answer FROM kept")
    assert read.returncode == 0 and read.stdout.strip() == "42", read.stderr
    _assert_lists_the_platforms_container(cplatform)


def test_delete_removes_the_nodes_and_frees_the_name(
    cplatform: Platform, cluster: dict[str, Any]
) -> None:
    cplatform.run("db", "delete", "pgk", "--wait", timeout=600)
    cplatform.run("cluster", "delete", "c1", "--wait", timeout=900)
    assert cplatform.json("cluster", "list") == []
    assert not [i for i in cplatform.json("instance", "list") if i["name"].startswith("c1-")]
    assert "c1.small" not in {f["name"] for f in cplatform.json("flavor", "list")}
    domains = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for node in cluster["nodes"]:
        assert f"onep-{node['instance_id']}" not in domains
