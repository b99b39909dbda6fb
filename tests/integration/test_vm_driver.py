"""The libvirt driver against the real libvirt 9 / QEMU 7 on this machine.

Every test that boots a VM makes its own and deletes it again, so at most one (TCG) VM runs
at a time. The guest is conftest's ``vm_test_image``: the host's kernel with a busybox
initramfs that reports the attached disks, the config bundle's sha256 and a boot counter kept
on the data disk on its serial console, then serves HTTP on 5432.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers import driver_class
from oneplatform.compute.drivers.base import (
    BackendInstance,
    HostRef,
    InstanceSpec,
    PortMapping,
    VolumeSpec,
)
from oneplatform.compute.drivers.vm import LibvirtDriver, forget_domain_types
from oneplatform.compute.drivers.vm_domain import (
    LIBVIRT_STATE_NAMES,
    LIBVIRT_STATES,
    console_log_name,
    domain_name,
    map_state,
    root_volume_name,
)
from oneplatform.errors import BackendError, BackendNotFound, BackendUnavailable
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.schemas.compute import ComputeType, PowerState

pytestmark = pytest.mark.integration

NewId = Callable[[], str]
GUEST_PORT = 5432
LIBVIRT_URI = "qemu:///system"  # conftest's libvirt_host
VM_TEST_POOL = "oneplatform"
VM_IGNORE_CAD = "onep_test.cad=ignore"  # the test guest then ignores Ctrl-Alt-Del
BOOT_TIMEOUT_S = 120.0  # TCG on 2 cores; the test guest usually answers in about 5 s
BUNDLE = json.dumps({"instance": "vm-test", "secret": "s3cr\u00e9t", "n": list(range(50))}).encode()


# ---------------------------------------------------------------------------- helpers


def make_spec(
    instance_id: str,
    image: ImageArtifact,
    host_port: int,
    *,
    bundle: bytes | None = BUNDLE,
    volumes: tuple[VolumeSpec, ...] = (VolumeSpec("pgdata", 1, "/var/lib/postgresql"),),
) -> InstanceSpec:
    return InstanceSpec(
        instance_id=instance_id,
        name=f"vm-test-{instance_id[:8]}",
        image=image,
        vcpus=1,
        ram_mb=256,
        disk_gb=1,
        ports=(PortMapping(name="db", guest_port=GUEST_PORT, host_port=host_port),),
        volumes=volumes,
        config_bundle=bundle,
    )


def http_get(port: int, timeout: float = BOOT_TIMEOUT_S, path: str = "/") -> tuple[str, float]:
    """GET path on 127.0.0.1:port until the guest answers; returns the body and seconds waited.

    QEMU's user networking accepts the TCP connection on the host side whether or not the
    guest listens, so only an HTTP answer proves the guest is serving.
    """
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            if data.startswith(b"HTTP/"):
                return data.partition(b"\r\n\r\n")[2].decode(), time.monotonic() - started
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"127.0.0.1:{port} gave no HTTP answer within {timeout}s: {last}")


def wait_console(driver: LibvirtDriver, instance_id: str, pattern: str, timeout: float = 60) -> str:
    """The serial log once it matches ``pattern`` (a regex)."""
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = driver.console_log(instance_id, tail=100_000)
        if re.search(pattern, log):
            return log
        time.sleep(0.5)
    raise AssertionError(f"console never matched {pattern!r}; it holds:\n{log}")


def libvirt_conn() -> Any:
    import libvirt

    return libvirt.open(LIBVIRT_URI)


def domain_xml(instance_id: str) -> ET.Element:
    conn = libvirt_conn()
    try:
        return ET.fromstring(conn.lookupByName(domain_name(instance_id)).XMLDesc(0))
    finally:
        conn.close()


def instance_volumes(instance_id: str) -> dict[str, str]:
    """name -> key of every pool volume named for the instance."""
    conn = libvirt_conn()
    try:
        pool = conn.storagePoolLookupByName(VM_TEST_POOL)
        pool.refresh(0)
        prefix = f"onep-{instance_id}-"
        return {
            n: pool.storageVolLookupByName(n).key()
            for n in pool.listVolumes()
            if n.startswith(prefix)
        }
    finally:
        conn.close()


def our_domains(instance_id: str) -> list[str]:
    conn = libvirt_conn()
    try:
        return [d.name() for d in conn.listAllDomains(0) if instance_id in d.name()]
    finally:
        conn.close()


def boot(
    driver: LibvirtDriver, spec: InstanceSpec, port: int
) -> tuple[BackendInstance, float, float]:
    """create, then wait for HTTP: (instance, seconds create took, seconds create→port)."""
    started = time.monotonic()
    inst = driver.create(spec)
    created = time.monotonic() - started
    _body, waited = http_get(port)
    return inst, created, created + waited


@pytest.fixture
def libvirt_driver(libvirt_available: None, libvirt_host: HostRef) -> LibvirtDriver:
    return LibvirtDriver(libvirt_host)


# ---------------------------------------------------------------------------- no VM needed


def test_state_table_covers_every_libvirt_domain_state(libvirt_available: None) -> None:
    import libvirt

    for code, name in LIBVIRT_STATE_NAMES.items():
        assert getattr(libvirt, f"VIR_DOMAIN_{name.upper()}") == code
        assert name in LIBVIRT_STATES, f"libvirt state {name} is not in the table"
    assert map_state(libvirt.VIR_DOMAIN_RUNNING) is PowerState.RUNNING
    assert map_state(libvirt.VIR_DOMAIN_BLOCKED) is PowerState.RUNNING
    assert map_state(libvirt.VIR_DOMAIN_PAUSED) is PowerState.PAUSED
    assert map_state(libvirt.VIR_DOMAIN_SHUTDOWN) is PowerState.STOPPING
    assert map_state(libvirt.VIR_DOMAIN_SHUTOFF) is PowerState.STOPPED
    assert map_state(libvirt.VIR_DOMAIN_CRASHED) is PowerState.CRASHED
    assert map_state(libvirt.VIR_DOMAIN_PMSUSPENDED) is PowerState.PAUSED
    assert map_state(libvirt.VIR_DOMAIN_NOSTATE) is PowerState.UNKNOWN
    # A crash is not reported as a plain stop or pause.
    shutoff, crashed_off = libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
    assert map_state(shutoff, crashed_off) is PowerState.CRASHED
    assert map_state(shutoff, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) is PowerState.STOPPED
    paused, crashed_paused = libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_CRASHED
    assert map_state(paused, crashed_paused) is PowerState.CRASHED
    assert map_state(99) is PowerState.UNKNOWN


def test_registered_with_capabilities_and_reasons(libvirt_available: None) -> None:
    assert driver_class(ComputeType.VM) is LibvirtDriver
    caps = LibvirtDriver.capabilities()
    for cap in (
        Capability.SNAPSHOT,
        Capability.RESIZE,
        Capability.FORCED_REBOOT,
    ):
        assert caps[cap] and LibvirtDriver.unsupported_reason(cap) is None
    assert LibvirtDriver.unsupported_reason(Capability.EXEC) == (
        "no in-guest exec channel: the VM is reached over its network services"
    )
    for cap in (
        Capability.LIVE_MIGRATE,
        Capability.BOOT_DEVICE,
        Capability.VIRTUAL_MEDIA,
    ):
        assert not caps[cap]
        assert cap in LibvirtDriver.UNSUPPORTED, f"{cap} needs a stated reason"


def test_inventory_comes_from_the_host_and_the_pool(libvirt_driver: LibvirtDriver) -> None:
    inv = libvirt_driver.inventory()
    assert inv.vcpus == os.cpu_count()
    meminfo = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    assert meminfo is not None
    assert inv.ram_mb == int(meminfo.group(1)) // 1024  # all of it, not NUMA cell 0's share
    assert inv.disk_gb > 0


def test_an_unreachable_daemon_is_backend_unavailable(libvirt_available: None) -> None:
    host = HostRef(
        id="h-nowhere",
        name="nowhere",
        compute_type=ComputeType.VM,
        uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock",
    )
    with pytest.raises(BackendUnavailable, match="Failed to connect socket"):
        LibvirtDriver(host).get("x")


def test_missing_instance(libvirt_driver: LibvirtDriver, new_vm_instance_id: NewId) -> None:
    instance_id = new_vm_instance_id()
    assert libvirt_driver.get(instance_id) is None
    for call in (libvirt_driver.start, libvirt_driver.stop, libvirt_driver.console_log):
        with pytest.raises(BackendNotFound):
            call(instance_id)
    libvirt_driver.delete(instance_id)  # silent


def test_the_probe_chooses_tcg_on_this_machine(
    libvirt_driver: LibvirtDriver, vm_test_image: ImageArtifact
) -> None:
    """``domain_type=auto`` must answer qemu here, although /dev/kvm and libvirt say KVM.

    The project's machines are VMs themselves: /dev/kvm exists and libvirt's domain
    capabilities offer ``kvm``, but nested KVM is broken (ENVIRONMENT.md) — QEMU aborts with
    "failed to set MSR 0x10a" with the host's CPU model, and with QEMU's default model the
    guest hangs in the kernel's decompressor. Only booting a real kernel tells, so the probe
    does that, and a KVM instance here would never boot.
    """
    forget_domain_types()
    started = time.monotonic()
    choice = libvirt_driver.domain_type(vm_test_image)
    took = time.monotonic() - started
    print(f"probe: {choice.domain_type} in {took:.1f}s: {choice.reason}")
    assert choice.domain_type == "qemu", choice.reason
    assert "KVM" in choice.reason
    assert took < 30
    again = time.monotonic()
    assert libvirt_driver.domain_type(vm_test_image) == choice  # cached per URI
    assert time.monotonic() - again < 0.1
    forced = HostRef(
        **{**dataclasses.asdict(libvirt_driver.host), "settings": {"domain_type": "kvm"}}
    )
    assert LibvirtDriver(forced).domain_type(vm_test_image).domain_type == "kvm"


# ---------------------------------------------------------------------------- with a VM


def test_create_boots_and_forwards_the_port_and_nothing_else(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    inst, created, to_port = boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    print(f"create returned in {created:.1f}s; 127.0.0.1:{port} answered {to_port:.1f}s after")
    assert inst.instance_id == instance_id
    assert inst.power_state is PowerState.RUNNING and inst.backend_state == "running"
    assert inst.ports == (PortMapping("db", GUEST_PORT, port),)
    body, _ = http_get(port, timeout=10)
    assert body.startswith("onep-test-vm vcpus=1 ")
    root = domain_xml(instance_id)
    assert root.get("type") == "qemu"  # the probe's answer on this machine
    assert root.findtext("name") == domain_name(instance_id)
    listed = {i.instance_id: i for i in libvirt_driver.list_instances()}
    assert listed[instance_id].backend_id == inst.backend_id
    assert libvirt_driver.get(instance_id) == inst
    # The forward is the only path: the guest reaches nothing on the host (restrict=on), not
    # a listener on the host's loopback, which user networking shows it as 10.0.2.2.
    with HostListener("127.0.0.1") as listener:
        assert http_get(listener.port, timeout=5)[0]  # it serves the host
        assert probe(port, f"127.0.0.1:{GUEST_PORT}") == "open"  # the probe works
        assert probe(port, f"10.0.2.2:{listener.port}") == "closed"
        assert probe(port, f"10.0.2.2:{port}") == "closed"  # not its own forward either
        assert probe(port, "10.0.2.2:8000") == "closed"  # the lab's Redfish emulator


def probe(port: int, target: str) -> str:
    """What the test guest's probe says of ``target`` (ADDRESS:PORT) from inside."""
    return http_get(port, timeout=30, path=f"/cgi-bin/probe?{target}")[0].strip()


class HostListener:
    """An HTTP server on a host address, for the duration of a ``with``."""

    def __init__(self, address: str) -> None:
        self.server = http.server.ThreadingHTTPServer(
            (address, 0), http.server.SimpleHTTPRequestHandler
        )
        self.port = int(self.server.server_address[1])

    def __enter__(self) -> HostListener:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_create_twice_makes_one_domain_and_the_same_volumes(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    spec = make_spec(instance_id, vm_test_image, port)
    first = libvirt_driver.create(spec)
    volumes = instance_volumes(instance_id)
    second = libvirt_driver.create(spec)
    assert second.backend_id == first.backend_id
    assert our_domains(instance_id) == [domain_name(instance_id)]
    assert instance_volumes(instance_id) == volumes
    assert set(volumes) >= {
        root_volume_name(instance_id),
        f"onep-{instance_id}-config.iso",
        f"onep-{instance_id}-data-pgdata.qcow2",
    }
    # create on a stopped instance starts it, still without a second domain. (Wait for the
    # guest first: one still booting resets on Ctrl-Alt-Del and is destroyed after the grace.)
    http_get(port)
    libvirt_driver.stop(instance_id)
    third = libvirt_driver.create(spec)
    assert third.power_state is PowerState.RUNNING and third.backend_id == first.backend_id
    assert instance_volumes(instance_id).keys() == volumes.keys()


def test_disks_have_their_serials_and_the_config_drive_carries_the_bundle(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    log = wait_console(libvirt_driver, instance_id, r"listening on 5432")
    serials = re.findall(r"onep-test: disk (vd\w+) serial=(\S+)", log)
    assert [s for _dev, s in serials] == ["onep-root", "onep-config", "onep-data"], log
    # The root disk is an overlay on the image's base disk (ext4 labelled onep-root).
    assert "root disk says hello from the base image" in log
    sha = hashlib.sha256(BUNDLE).hexdigest()
    assert f"bundle size={len(BUNDLE)} sha256={sha}" in log
    assert "data disk now 'onep-data boot=1'" in log
    disks = domain_xml(instance_id).findall("devices/disk")
    assert [d.findtext("serial") for d in disks] == ["onep-root", "onep-config", "onep-data"]
    assert disks[1].find("readonly") is not None


def test_no_bundle_means_no_config_drive(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    spec = make_spec(instance_id, vm_test_image, port, bundle=None, volumes=())
    boot(libvirt_driver, spec, port)
    log = wait_console(libvirt_driver, instance_id, r"listening on 5432")
    assert re.findall(r"serial=(\S+)", log) == ["onep-root"]
    assert "no config drive" in log
    assert f"onep-{instance_id}-config.iso" not in instance_volumes(instance_id)


def test_stop_start_keeps_the_data_disk(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    started = time.monotonic()
    libvirt_driver.stop(instance_id)
    took = time.monotonic() - started
    print(f"graceful stop took {took:.1f}s")
    inst = libvirt_driver.get(instance_id)
    assert inst is not None and inst.power_state is PowerState.STOPPED
    assert inst.backend_state == "shutoff"
    # The guest powered itself off on Ctrl-Alt-Del, well within the grace period.
    log = libvirt_driver.console_log(instance_id, tail=100_000)
    assert "onep-test: shutting down" in log and "reboot: Power down" in log
    assert took < 20
    libvirt_driver.stop(instance_id)  # silent when already off
    libvirt_driver.start(instance_id)
    http_get(port)
    libvirt_driver.start(instance_id)  # silent when running
    log = wait_console(libvirt_driver, instance_id, r"data disk now")
    assert "data disk held 'onep-data boot=1'" in log
    assert "onep-test: shutting down" not in log  # the log starts afresh at each boot


def test_stop_destroys_a_guest_that_ignores_ctrl_alt_del(
    libvirt_host: HostRef,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    assert vm_test_image.vm is not None
    deaf_vm = dataclasses.replace(
        vm_test_image.vm, cmdline=f"{vm_test_image.vm.cmdline} {VM_IGNORE_CAD}"
    )
    deaf = dataclasses.replace(vm_test_image, vm=deaf_vm)  # same ref: same base volumes
    grace = 3.0
    host = dataclasses.replace(
        libvirt_host, settings={**libvirt_host.settings, "stop_grace_s": grace}
    )
    driver = LibvirtDriver(host)
    instance_id, port = new_vm_instance_id(), free_port()
    boot(driver, make_spec(instance_id, deaf, port), port)
    started = time.monotonic()
    driver.stop(instance_id)
    took = time.monotonic() - started
    print(f"stop of a deaf guest took {took:.1f}s (grace {grace:g}s)")
    assert grace <= took < grace + 10
    inst = driver.get(instance_id)
    assert inst is not None and inst.power_state is PowerState.STOPPED
    assert "reboot: Power down" not in driver.console_log(instance_id, tail=100_000)


def test_reboot_and_force_reboot(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    libvirt_driver.reboot(instance_id)  # graceful stop + start
    http_get(port)
    log = wait_console(libvirt_driver, instance_id, r"data disk now")
    assert "data disk now 'onep-data boot=2'" in log
    libvirt_driver.force_reboot(instance_id)  # reset: same QEMU, no shutdown in the guest
    log = wait_console(libvirt_driver, instance_id, r"boot=3'[\s\S]*listening on 5432")
    assert log.count("onep-test: booted") == 2
    assert "onep-test: shutting down" not in log
    inst = libvirt_driver.get(instance_id)
    assert inst is not None and inst.power_state is PowerState.RUNNING
    http_get(port)


def test_console_log_tail(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    full = wait_console(libvirt_driver, instance_id, r"listening on 5432\n")
    assert "\r" not in full
    tail = libvirt_driver.console_log(instance_id, tail=3)
    assert len(tail.splitlines()) == 3
    assert full.endswith(tail) or libvirt_driver.console_log(instance_id, tail=100_000).endswith(
        tail
    )
    assert libvirt_driver.console_log(instance_id, tail=0) == ""
    # The log is a file in the storage pool, written by virtlogd.
    assert console_log_name(instance_id) in instance_volumes(instance_id)


def test_snapshot_running_and_stopped(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    assert libvirt_driver.snapshot(instance_id, "live-1") == "live-1"
    assert libvirt_driver.snapshot(instance_id, "live-1") == "live-1"  # idempotent
    http_get(port, timeout=10)  # the guest ran on
    libvirt_driver.stop(instance_id)
    assert libvirt_driver.snapshot(instance_id, "cold-1") == "cold-1"
    conn = libvirt_conn()
    try:
        dom = conn.lookupByName(domain_name(instance_id))
        assert sorted(dom.snapshotListNames(0)) == ["cold-1", "live-1"]
    finally:
        conn.close()
    sources = [
        d.find("source").get("file", "")  # type: ignore[union-attr]
        for d in domain_xml(instance_id).findall("devices/disk")
    ]
    assert sources[0].endswith(f"onep-{instance_id}-snap-cold-1-vda.qcow2")
    assert sources[1].endswith(f"onep-{instance_id}-config.iso")  # never snapshotted
    assert sources[2].endswith(f"onep-{instance_id}-snap-cold-1-vdc.qcow2")
    libvirt_driver.start(instance_id)
    log = wait_console(libvirt_driver, instance_id, r"data disk now")
    assert "data disk now 'onep-data boot=2'" in log  # the chain kept the data
    with pytest.raises(BackendError, match="snapshot name"):
        libvirt_driver.snapshot(instance_id, "../escape")
    libvirt_driver.delete(instance_id)
    assert instance_volumes(instance_id) == {}


def test_resize_changes_vcpus_and_ram(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    boot(libvirt_driver, make_spec(instance_id, vm_test_image, port), port)
    libvirt_driver.resize(instance_id, vcpus=2, ram_mb=384)
    root = domain_xml(instance_id)
    assert root.findtext("vcpu") == "2"
    memory = root.find("memory")
    assert memory is not None and (memory.get("unit"), memory.text) == ("KiB", str(384 * 1024))
    body, _ = http_get(port)
    assert body.startswith("onep-test-vm vcpus=2 ")  # the guest sees the new size
    inst = libvirt_driver.get(instance_id)
    assert inst is not None and inst.power_state is PowerState.RUNNING
    started = time.monotonic()
    libvirt_driver.resize(instance_id, vcpus=2, ram_mb=384)  # already that size: no restart
    assert time.monotonic() - started < 1


def test_delete_removes_the_domain_and_its_volumes(
    libvirt_driver: LibvirtDriver,
    vm_test_image: ImageArtifact,
    new_vm_instance_id: NewId,
    free_port: Callable[[], int],
) -> None:
    instance_id, port = new_vm_instance_id(), free_port()
    libvirt_driver.create(make_spec(instance_id, vm_test_image, port))
    wait_console(libvirt_driver, instance_id, r"onep-test: booted")
    assert len(instance_volumes(instance_id)) == 4  # root, config, data, console log
    libvirt_driver.delete(instance_id)
    assert our_domains(instance_id) == []
    assert instance_volumes(instance_id) == {}
    assert libvirt_driver.get(instance_id) is None
    libvirt_driver.delete(instance_id)  # silent when already gone
    with pytest.raises(BackendNotFound):
        libvirt_driver.stop(instance_id)
