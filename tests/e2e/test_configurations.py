"""Configuration groups end to end: `onep db config` against the real Podman and PostgreSQL
15; every value read back with psql's SHOW over the database's endpoint."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e
GROUP = "pgtuned"


def show(platform: Platform, db: dict[str, Any], setting: str) -> str:
    """``SHOW setting`` through the database's endpoint with psql, as its admin."""
    creds = platform.json("db", "credentials", db["name"])
    endpoint = db["endpoint"]
    out = subprocess.run(
        ["psql", "-h", endpoint["host"], "-p", str(endpoint["port"]), "-U", creds["username"],
         "-d", "postgres", "-XtAc", f"SHOW {setting}"],
        env={"PGPASSWORD": creds["password"], "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def refused(platform: Platform, *args: str) -> str:
    """What the CLI says when the platform refuses ``args`` (it must exit non-zero)."""
    proc = platform.run(*args, check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def pgdb(platform: Platform) -> Iterator[dict[str, Any]]:
    db = platform.json(
        "db", "create", "pgcfg", "--datastore", "postgresql", "--version", "15",
        "--flavor", "container.small", "--wait",
    )  # fmt: skip
    yield db
    platform.run("db", "delete", "pgcfg", "--wait", check=False)


def test_a_group_is_checked_against_the_engines_catalog(platform: Platform) -> None:
    for bad, code in (
        ("no_such_parameter=1", "config_parameter_unknown"),
        ("port=6543", "config_parameter_owned"),
        ("max_connections=0", "config_value_out_of_range"),
        ("max_connections=many", "config_value_invalid"),
        ("work_mem=8XB", "config_value_invalid"),
    ):
        said = refused(
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
    before = show(platform, pgdb, "max_connections")
    assert before != "200" and show(platform, pgdb, "work_mem") != "8MB"

    attached = platform.json("db", "config", "attach", "pgcfg", GROUP)
    assert attached["configuration"] == GROUP and attached["restart_required"] is True
    assert show(platform, pgdb, "work_mem") == "8MB"  # a reload applies it
    assert show(platform, pgdb, "max_connections") == before  # the postmaster's: not yet
    shown = platform.json("db", "show", "pgcfg")
    assert (shown["configuration"], shown["restart_required"]) == (GROUP, True)
    group = platform.json("db", "config", "show", GROUP)
    assert [(i["name"], i["restart_required"]) for i in group["instances"]] == [("pgcfg", True)]
    said = refused(platform, "db", "config", "delete", GROUP)
    assert "configuration_in_use" in said, said

    platform.run("db", "restart", "pgcfg", "--wait")
    shown = platform.json("db", "show", "pgcfg")
    assert (shown["status"], shown["restart_required"]) == ("ACTIVE", False)
    assert show(platform, pgdb, "max_connections") == "200"
    assert show(platform, pgdb, "work_mem") == "8MB"  # kept across the restart


def test_an_update_reaches_the_databases_using_the_group(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    group = platform.json("db", "config", "update", GROUP, "--set", "work_mem=16MB")
    assert group["values"] == {"max_connections": "200", "work_mem": "16MB"}
    assert show(platform, pgdb, "work_mem") == "16MB"
    assert platform.json("db", "show", "pgcfg")["restart_required"] is False


def test_detach_goes_back_to_the_platforms_settings(
    platform: Platform, pgdb: dict[str, Any]
) -> None:
    detached = platform.json("db", "config", "detach", "pgcfg")
    assert detached["configuration"] is None and detached["restart_required"] is True
    assert show(platform, pgdb, "work_mem") == "4MB"  # container.small's, at once
    platform.run("db", "restart", "pgcfg", "--wait")
    assert show(platform, pgdb, "max_connections") != "200"
    platform.run("db", "config", "delete", GROUP)
    assert platform.json("db", "config", "list") == []
