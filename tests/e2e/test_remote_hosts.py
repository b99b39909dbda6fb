"""A second container host reached as in production: Podman over SSH (tests/sshd.py).

The platform's own local Podman host, and beside it a host added with ``onep host add`` at
``ssh://root@127.0.0.2:PORT/…/podman.sock`` (a Podman service with a storage of its own, behind
a real sshd with its own host key) publishing on 127.0.0.2. A database is made on each (the
remote one through a flavor that requires the trait only that host offers), both answer psql
at their endpoints, and the remote one's engine is published on 127.0.0.2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Platform
from tests.integration.conftest import require_or_fail
from tests.sshd import SshHost, ssh_host, sshd_missing

PASSWORD = "remote-hosts-pw-0123456789"


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    problem = sshd_missing()
    require_or_fail(problem is None, problem or "")
    with ssh_host(tmp_path_factory.mktemp("remote-podman"), podman=True) as host:
        yield host


def psql(endpoint: dict[str, Any], sql: str) -> str:
    out = subprocess.run(
        ["psql", "-h", endpoint["host"], "-p", str(endpoint["port"]), "-U", "app",
         "-d", "appdb", "-tAc", sql],
        env={"PGPASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def create_db(platform: Platform, name: str, flavor: str, **env: str) -> dict[str, Any]:
    return dict(
        platform.json(
            "db", "create", name, "--datastore", "postgresql", "--version", "15",
            "--flavor", flavor, "--size-gb", "1", "--database", "appdb",
            "--user", f"app:{PASSWORD}", "--wait", **env,
        )
    )  # fmt: skip


def test_a_database_on_the_local_host_and_one_on_a_host_over_ssh(
    platform: Platform, remote: SshHost
) -> None:
    # The remote database is another project's: each project's guests have a Podman network
    # of their own, and the two Podmans here share one kernel and one CNI directory (on two
    # machines they would not), so neither may remove a network the other's guests use.
    token = platform.json("project", "create", "far-away")["token"]
    try:
        local = create_db(platform, "here", "container.small")  # one host so far: the local
        unreachable = platform.run(
            "host", "add", "far", "--pool", _container_pool(platform),
            "--uri", f"ssh://root@{remote.address}:1/run/podman/podman.sock",
            "--host-key", remote.host_key, check=False,
        )  # fmt: skip
        assert unreachable.returncode != 0 and "host_unreachable" in unreachable.stderr
        platform.run(
            "host", "add", "far", "--pool", _container_pool(platform),
            "--uri", remote.podman_uri, "--bind-address", remote.address,
            "--identity-file", str(remote.identity_file), "--host-key", remote.host_key,
            "--trait", "remote",
        )  # fmt: skip
        hosts = {h["name"]: h for h in platform.json("host", "list")}
        assert hosts["far"]["bind_address"] == remote.address and hosts["far"]["vcpus"] > 0
        platform.run(
            "flavor", "create", "container.remote", "--compute-type", "container",
            "--vcpus", "1", "--ram-mb", "512", "--disk-gb", "2", "--trait", "remote",
        )  # fmt: skip
        far = create_db(platform, "there", "container.remote", ONEP_TOKEN=token)
        for db in (local, far):
            assert db["status"] == "ACTIVE"
            assert psql(db["endpoint"], "SELECT current_user") == "app"
        psql(far["endpoint"], "CREATE TABLE t AS SELECT 'far' AS v")
        assert psql(far["endpoint"], "SELECT v FROM t") == "far"
        members = {db["name"]: db["members"][0]["endpoint"] for db in (local, far)}
        assert members["here"]["host"] == "127.0.0.1"
        assert members["there"]["host"] == remote.address  # published on the remote's address
        assert psql(members["there"], "SELECT v FROM t") == "far"
        # the engine runs in the remote host's Podman (its own storage), not in this one's
        running = remote.podman("ps", "--format", "{{.Names}}").stdout.split()
        assert len(running) == 1 and running[0].startswith("onep-")
        local_names = subprocess.run(
            ["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert running[0] not in local_names
    finally:
        there = platform.run("db", "delete", "there", "--wait", check=False, ONEP_TOKEN=token)
        here = platform.run("db", "delete", "here", "--wait", check=False)
    assert there.returncode == 0 and here.returncode == 0, there.stderr + here.stderr
    assert remote.podman("ps", "-aq").stdout.split() == []


def _container_pool(platform: Platform) -> str:
    pools = [p["name"] for p in platform.json("pool", "list") if p["compute_type"] == "container"]
    assert pools, "the platform has no container pool"
    return pools[0]
