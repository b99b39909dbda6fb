"""The VM compute type end to end: real libvirt/QEMU (TCG here), driven through the CLI."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e


def _dumpxml(instance_id: str) -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", f"onep-{instance_id}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_vm_capabilities_are_served(platform: Platform) -> None:
    types = {t["name"]: t for t in platform.json("compute-type", "list")}
    caps = {c["name"]: c for c in types["vm"]["capabilities"]}
    for name in ("snapshot", "resize", "forced_reboot", "grow_storage"):
        assert caps[name]["supported"] is True, name
    assert caps["exec"]["supported"] is False and caps["exec"]["reason"]
    flavors = {f["name"]: f for f in platform.json("flavor", "list")}
    assert flavors["vm.small"]["compute_type"] == "vm"
    assert "vms" in [p["name"] for p in platform.json("pool", "list")]


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
        # a resize stops the domain and starts it again (the driver's own stop and start
        # are tested in tests/integration/test_vm_driver.py; the API's, on a container)
        resized = platform.json(
            "instance", "resize", "vm1", "--flavor", "vm.medium", "--wait", timeout=600
        )
        assert (resized["status"], resized["flavor"]) == ("ACTIVE", "vm.medium")
        assert re.search(r"<vcpu[^>]*>2</vcpu>", _dumpxml(inst["id"]))
        reset = platform.json("instance", "reboot", "vm1", "--force", "--wait", timeout=600)
        assert reset["status"] == "ACTIVE"
        # The console log starts again with the new boot: just after the reset it can still
        # be empty (TCG), so it is read until the kernel's first line is there. Enough lines
        # to hold it: the last 200 can all be the boot's first second, after that line.
        deadline = time.monotonic() + 120
        while True:
            console = platform.run("instance", "console", "vm1", "--tail", "5000").stdout
            if "Linux version" in console or "oneplatform" in console.lower():
                break
            assert time.monotonic() < deadline, console[-2000:]
            time.sleep(2)
    finally:
        platform.run("instance", "delete", "vm1", "--wait", timeout=600, check=False)
    assert platform.json("instance", "list") == []
