"""Container instances end to end: `onep up`, the CLI, the real Podman and PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.e2e.conftest import Platform, free_port, podman_containers

pytestmark = pytest.mark.e2e


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_instance_lifecycle_through_the_cli(platform: Platform) -> None:
    inst = platform.json(
        "instance",
        "create",
        "pg1",
        "--flavor",
        "container.small",
        "--image",
        "postgresql-15",
        "--wait",
    )
    assert inst["status"] == "ACTIVE"
    assert inst["compute_type"] == "container"
    assert inst["flavor"] == "container.small"
    assert inst["host"] == "local-podman"
    endpoints = {e["name"]: e for e in inst["endpoints"]}
    assert set(endpoints) == {"postgresql", "agent"}  # the image's services
    endpoint = endpoints["postgresql"]
    assert endpoint["host"] == "127.0.0.1"
    assert _accepts_tcp(endpoint["host"], endpoint["port"])
    ready = subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", str(endpoint["port"])],
        capture_output=True,
        text=True,
    )
    assert ready.returncode == 0, ready.stdout
    (container,) = podman_containers(inst["id"])
    assert container["State"] == "running"

    listed = platform.json("instance", "list")
    assert [i["name"] for i in listed] == ["pg1"]
    assert platform.json("instance", "show", "pg1")["id"] == inst["id"]

    stopped = platform.json("instance", "stop", "pg1", "--wait")
    assert stopped["status"] == "SHUTOFF" and stopped["power_state"] == "stopped"
    assert not _accepts_tcp("127.0.0.1", endpoint["port"])
    assert podman_containers(inst["id"])[0]["State"] == "exited"

    started = platform.json("instance", "start", "pg1", "--wait")
    assert started["status"] == "ACTIVE"
    assert started["endpoints"] == inst["endpoints"]  # the same port after a restart
    assert _accepts_tcp("127.0.0.1", endpoint["port"])

    rebooted = platform.json("instance", "reboot", "pg1", "--wait")
    assert rebooted["status"] == "ACTIVE"

    console = platform.run("instance", "console", "pg1").stdout
    assert "database system is ready to accept connections" in console

    version = platform.run("instance", "exec", "pg1", "--", "psql", "--version")
    assert "PostgreSQL) 15" in version.stdout

    ops = platform.json("operation", "list")
    create_op = next(o for o in ops if o["kind"] == "instance.create")
    shown = platform.json("operation", "show", create_op["id"])
    assert shown["status"] == "SUCCEEDED" and shown["progress"] == 1.0
    assert all(s["status"] == "done" for s in shown["steps"])

    platform.run("instance", "delete", "pg1", "--wait")
    assert podman_containers(inst["id"]) == []
    assert platform.json("instance", "list") == []
    missing = platform.run("instance", "show", "pg1", check=False)
    assert missing.returncode != 0 and "instance_not_found" in missing.stderr


def test_refusals_through_the_cli(platform: Platform) -> None:
    cases = [
        (["--flavor", "nope.small", "--image", "postgresql-15"], "flavor_not_found"),
        (["--flavor", "container.small", "--image", "nope"], "image_not_found"),
    ]
    for args, code in cases:
        out = platform.run("instance", "create", "x1", *args, check=False)
        assert out.returncode == 1 and code in out.stderr, out.stderr
    bad = platform.run(
        "instance",
        "create",
        "Bad_Name",
        "--flavor",
        "container.small",
        "--image",
        "postgresql-15",
        check=False,
    )
    assert bad.returncode == 1 and "invalid_input" in bad.stderr
    assert platform.json("instance", "list") == []


def test_compute_types_flavors_and_status(platform: Platform) -> None:
    types = platform.json("compute-type", "list")
    container = next(t for t in types if t["name"] == "container")
    exec_cap = next(c for c in container["capabilities"] if c["name"] == "exec")
    assert exec_cap["supported"] is True
    flavors = {f["name"] for f in platform.json("flavor", "list")}
    assert {"container.small", "container.medium", "container.large"} <= flavors
    assert platform.run("status").returncode == 0
    pools = platform.json("pool", "list")
    assert "containers" in [p["name"] for p in pools]


def test_another_projects_token_sees_nothing(platform: Platform) -> None:
    platform.json(
        "instance", "create", "mine", "--flavor", "container.small", "--image", "postgresql-15"
    )
    created = platform.json("project", "create", "tenant-b")
    other = {"ONEP_TOKEN": created["token"]}
    assert platform.json("instance", "list", **other) == []
    for args in (["show"], ["stop"], ["delete"], ["console"]):
        out = platform.run("instance", *args, "mine", check=False, **other)
        assert out.returncode == 1 and "instance_not_found" in out.stderr, out.stderr
    platform.run("instance", "delete", "mine", "--wait")


def test_sigkill_during_create_resumes_to_one_active_container(
    tmp_path_factory: pytest.TempPathFactory, platform: Platform
) -> None:
    """Kill -9 after the container was made but before the step was recorded; restart."""
    crashy = Platform(home=tmp_path_factory.mktemp("onep-crash"), port=free_port())
    crashy.start(ONEP_FAILPOINT="instance.create:create")
    try:
        crashy.wait_images_ready()
        accepted = crashy.json(
            "instance",
            "create",
            "phoenix",
            "--flavor",
            "container.small",
            "--image",
            "postgresql-15",
        )
        op_id = accepted["id"]
        deadline = time.monotonic() + 120
        while "FAILPOINT instance.create:create" not in crashy.log():
            assert time.monotonic() < deadline, crashy.log()[-2000:]
            time.sleep(0.2)
        inst = crashy.json("instance", "show", "phoenix")
        assert inst["status"] == "BUILD"
        assert len(podman_containers(inst["id"])) == 1  # made, but not recorded as done
        crashy.kill()

        crashy.start()  # no failpoint now
        op = _wait_op(crashy, op_id)
        assert op["status"] == "SUCCEEDED", op
        create_step = next(s for s in op["steps"] if s["name"] == "create")
        assert create_step["status"] == "done"
        final = crashy.json("instance", "show", "phoenix")
        assert final["status"] == "ACTIVE"
        assert len(podman_containers(inst["id"])) == 1
        assert all(_accepts_tcp(e["host"], e["port"]) for e in final["endpoints"])
        crashy.run("instance", "delete", "phoenix", "--wait")
        assert podman_containers(inst["id"]) == []
    finally:
        crashy.stop()


def _wait_op(p: Platform, op_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = p.json("operation", "show", op_id)
        if op["status"] in ("SUCCEEDED", "FAILED"):
            return op
        time.sleep(0.5)
    raise AssertionError(f"operation {op_id} did not finish")
