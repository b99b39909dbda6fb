"""The Trove v1.0 facade end to end: the real ``openstack database …`` CLI
(python-openstackclient + python-troveclient) against a running platform, signed in through
the Keystone v3 facade with a platform user's password and a ``clouds.yaml`` like the one
docs/openstack.md shows (``openstack --os-cloud onep …``); one PostgreSQL database for the
whole module, and a real ``psql`` login to what the CLI created. Skipping identity
(``--os-auth-type admin_token`` with a platform token), as COMPAT.md notes the clients
allow, works too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e
OPENSTACK = str(Path(sys.executable).with_name("openstack"))
ALICE_PW = "S3cret-pass-1"


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
def osc(
    platform: Platform, project: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> OpenStack:
    """``openstack --os-cloud onep``: a user of the project, made with ``onep user create``,
    signs in with its password through /identity."""
    user = platform.json("user", "create", "ostack", "--project", "trove-e2e")
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
