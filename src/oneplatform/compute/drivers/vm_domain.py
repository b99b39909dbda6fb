"""What the libvirt driver tells libvirt, without talking to it: names, the state table,
and every XML document (domain, pool, volume, snapshot, KVM probe) it defines or parses.

Pure functions and data only (no libvirt import, no I/O), so they are easy to read and test;
:mod:`oneplatform.compute.drivers.vm` does the talking.
"""

from __future__ import annotations

import hashlib
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from oneplatform.compute.drivers.base import HostRoute, PortMapping
from oneplatform.guest import contract
from oneplatform.schemas.compute import PowerState

NAME_PREFIX = "onep-"
XML_NS = "https://oneplatform.dev/xmlns/libvirt/instance/1"  # our <metadata> element
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("onep", XML_NS)
ET.register_namespace("qemu", QEMU_NS)

MAX_DATA_VOLUMES = 10  # disks take PCI slots 0x04..0x0f; the NIC sits at 0x10
MIN_RAM_MB = 64
# The disks and config drive the guest looks for (the guest contract).
SERIAL_ROOT = contract.ROOT_SERIAL
SERIAL_CONFIG = contract.CONFIG_SERIAL
SERIAL_DATA = contract.DATA_SERIAL
CONFIG_VOLUME_ID = contract.CONFIG_LABEL
CONFIG_FILE = contract.CONFIG_DRIVE_BUNDLE
FIRST_DISK_SLOT = 0x04
RNG_PCI_SLOT = "0x11"
NIC_PCI_ADDR = "0x10"  # explicit, so the NIC libvirt does not know about never takes a disk's slot
# Linux input key codes (VIR_KEYCODE_SET_LINUX) of Ctrl-Alt-Del.
CTRL_ALT_DEL = (29, 56, 111)

# libvirt's virDomainState values (a stable ABI) and the reasons we tell apart.
LIBVIRT_STATE_NAMES: dict[int, str] = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}
_CRASH_REASONS: dict[str, int] = {"paused": 10, "shutoff": 3}  # VIR_DOMAIN_*_CRASHED

# libvirt domain states (``state`` or ``state:reason``) -> PowerState; anything else is UNKNOWN.
LIBVIRT_STATES: dict[str, PowerState] = {
    "nostate": PowerState.UNKNOWN,  # libvirt itself does not know
    "running": PowerState.RUNNING,
    "blocked": PowerState.RUNNING,  # running, waiting on a resource (idle vCPUs)
    "paused": PowerState.PAUSED,  # vCPUs paused by libvirt or a user
    "paused:crashed": PowerState.CRASHED,  # QEMU stopped the vCPUs on an internal error
    "shutdown": PowerState.STOPPING,  # the guest is shutting down
    "shutoff": PowerState.STOPPED,
    "shutoff:crashed": PowerState.CRASHED,  # on_crash=destroy turned a crash into shutoff
    "crashed": PowerState.CRASHED,
    "pmsuspended": PowerState.PAUSED,  # suspended by the guest's power management (S3)
}

VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_]{1,64}")  # no '-': it ends the volume name prefix


def state_label(state: int, reason: int = 0) -> str:
    """``running``, ``shutoff:crashed``…: the key of :data:`LIBVIRT_STATES` for a domain state."""
    name = LIBVIRT_STATE_NAMES.get(state, f"state-{state}")
    return f"{name}:crashed" if _CRASH_REASONS.get(name) == reason else name


def map_state(state: int, reason: int = 0) -> PowerState:
    """Map libvirt's (state, reason) of a domain to a PowerState; UNKNOWN if unlisted."""
    return LIBVIRT_STATES.get(state_label(state, reason), PowerState.UNKNOWN)


def domain_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}"


def root_volume_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}-root.qcow2"


def data_volume_name(instance_id: str, name: str) -> str:
    return f"{NAME_PREFIX}{instance_id}-data-{name}.qcow2"


def config_volume_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}-config.iso"


def console_log_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}-console.log"


def snapshot_volume_name(instance_id: str, snapshot: str, disk: str) -> str:
    return f"{NAME_PREFIX}{instance_id}-snap-{snapshot}-{disk}.qcow2"


def data_serial(index: int) -> str:
    """The serial of the ``index``-th data disk: ``onep-data``, ``onep-data-2``, …"""
    return SERIAL_DATA if index == 0 else f"{SERIAL_DATA}-{index + 1}"


@dataclass(frozen=True)
class BaseVolumes:
    """The storage-pool volumes one image is uploaded as."""

    disk: str
    kernel: str
    initrd: str


def base_volume_names(ref: str) -> BaseVolumes:
    """``base-<sanitised ref>-<hash>.{qcow2,kernel,initrd}``; the hash keeps refs apart."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref).strip("._-")[:80] or "image"
    stem = f"base-{slug}-{hashlib.sha256(ref.encode()).hexdigest()[:8]}"
    return BaseVolumes(disk=f"{stem}.qcow2", kernel=f"{stem}.kernel", initrd=f"{stem}.initrd")


@dataclass(frozen=True)
class DiskAttachment:
    path: str
    fmt: str  # "qcow2" or "raw"
    serial: str
    read_only: bool = False


@dataclass(frozen=True)
class DomainPlan:
    """Everything the domain XML is made from."""

    instance_id: str
    title: str
    image_ref: str
    domain_type: str
    vcpus: int
    ram_mb: int
    kernel: str
    initrd: str
    cmdline: str
    disks: tuple[DiskAttachment, ...]
    console_log: str
    bind_address: str
    ports: tuple[PortMapping, ...]
    host_services: tuple[HostRoute, ...] = ()


# A VM reaches a host service at this address of its user network (the port is the
# service's own): QEMU runs busybox's nc per connection to the service (a guestfwd ``cmd:``;
# its chardev form carries one connection per VM life). No other guest traffic leaves.
GUEST_SERVICE_ADDRESS = "10.0.2.100"
NC = "/usr/bin/busybox nc"


def _guestfwd(route: HostRoute) -> str:
    # No comma may appear (QEMU's option syntax); stderr must not reach the guest's stream.
    command = f'/bin/sh -c "exec {NC} {route.address} {route.port} 2>/dev/null"'
    return f"guestfwd=tcp:{GUEST_SERVICE_ADDRESS}:{route.port}-cmd:{command}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _hostfwd(bind_address: str, port: PortMapping) -> str:
    return f"hostfwd={port.protocol}:{bind_address}:{port.host_port}-:{port.guest_port}"


def build_domain_xml(plan: DomainPlan) -> str:
    """The persistent domain definition of one instance (pure: no libvirt calls)."""
    dom = ET.Element("domain", type=plan.domain_type)
    _sub(dom, "name", domain_name(plan.instance_id))
    _sub(dom, "uuid", str(instance_uuid(plan.instance_id)))
    _sub(dom, "title", plan.title)
    meta = ET.SubElement(_sub(dom, "metadata"), f"{{{XML_NS}}}instance")
    _sub(meta, f"{{{XML_NS}}}id", plan.instance_id)
    _sub(meta, f"{{{XML_NS}}}image", plan.image_ref)
    for p in plan.ports:
        attrs = {"guest": str(p.guest_port), "host": str(p.host_port), "protocol": p.protocol}
        _sub(meta, f"{{{XML_NS}}}port", name=p.name, **attrs)
    _sub(dom, "memory", str(plan.ram_mb), unit="MiB")
    _sub(dom, "currentMemory", str(plan.ram_mb), unit="MiB")
    _sub(dom, "vcpu", str(plan.vcpus), placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", plan.kernel)
    _sub(os_el, "initrd", plan.initrd)
    _sub(os_el, "cmdline", plan.cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if plan.domain_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")
    _sub(dom, "clock", offset="utc")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        _sub(dom, f"on_{event}", action)
    devices = _sub(dom, "devices")
    for i, disk in enumerate(plan.disks):
        _add_disk(devices, disk, f"vd{chr(ord('a') + i)}", FIRST_DISK_SLOT + i)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=plan.console_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    # Entropy from the host: without it the guest's first blocking getrandom() stalls the boot.
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(rng, "address", type="pci", domain="0x0000", bus="0x00", slot=RNG_PCI_SLOT)
    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    # restrict=on: the guest reaches nothing outside (the host's loopback at 10.0.2.2
    # included); only the forwards below reach the guest.
    forwards = [_hostfwd(plan.bind_address, p) for p in plan.ports]
    forwards += [_guestfwd(route) for route in plan.host_services]
    netdev = ",".join(["user", "id=onepnet0", "restrict=on", *forwards])
    nic = f"virtio-net-pci,netdev=onepnet0,addr={NIC_PCI_ADDR}"
    args = ["-netdev", netdev, "-device", nic]
    if plan.host_services:
        # A guestfwd command is a process QEMU spawns: libvirt's default sandbox forbids it
        # (spawn=deny, elevateprivileges=deny kill QEMU at the guest's first connection).
        # This domain gets the same sandbox with those two allowed.
        args += ["-sandbox", SANDBOX_WITH_SPAWN]
        caps = ET.SubElement(dom, f"{{{QEMU_NS}}}capabilities")
        ET.SubElement(caps, f"{{{QEMU_NS}}}del", capability="seccomp-sandbox")
    for arg in args:
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(dom, encoding="unicode")


SANDBOX_WITH_SPAWN = "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny"


def _add_disk(devices: ET.Element, disk: DiskAttachment, target: str, slot: int) -> None:
    attrs = {"type": "file", "device": "disk"}
    if disk.read_only:  # the config drive: never part of a snapshot
        attrs["snapshot"] = "no"
    el = _sub(devices, "disk", **attrs)
    _sub(el, "driver", name="qemu", type=disk.fmt)
    _sub(el, "source", file=disk.path)
    _sub(el, "target", dev=target, bus="virtio")
    _sub(el, "serial", disk.serial)
    if disk.read_only:
        _sub(el, "readonly")
    _sub(el, "address", type="pci", domain="0x0000", bus="0x00", slot=f"0x{slot:02x}")
    el[-1].set("function", "0x0")


def disk_with_serial(domain: ET.Element, serial: str) -> tuple[str, str] | None:
    """(target device, source file) of the domain's disk with ``serial``, or None. The source
    is the disk's top layer (a snapshot's overlay once there is one)."""
    for disk in domain.iterfind("./devices/disk"):
        if disk.findtext("serial") != serial:
            continue
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None:
            return target.get("dev", ""), source.get("file", "")
    return None


def instance_uuid(instance_id: str) -> uuid.UUID:
    """The domain UUID of an instance: fixed, so a repeated define updates the same domain."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{XML_NS}#{instance_id}")


def _metadata(root: ET.Element) -> ET.Element | None:
    return root.find(f"metadata/{{{XML_NS}}}instance")


def instance_id_of(root: ET.Element) -> str | None:
    meta = _metadata(root)
    return None if meta is None else (meta.findtext(f"{{{XML_NS}}}id") or None)


def ports_of(root: ET.Element) -> tuple[PortMapping, ...]:
    meta = _metadata(root)
    if meta is None:
        return ()
    found: list[PortMapping] = []
    for p in meta.findall(f"{{{XML_NS}}}port"):
        try:
            guest, host_port = int(p.get("guest", "")), int(p.get("host", ""))
        except ValueError:
            continue
        protocol = p.get("protocol", "tcp")
        found.append(PortMapping(p.get("name", ""), guest, host_port, protocol))
    return tuple(found)


def console_text(data: bytes) -> str:
    """Console bytes as text: UTF-8 (invalid bytes replaced), serial CRLF made LF."""
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n")


def tail_lines(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:]) if lines > 0 else ""


_UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "m": 1024, "mib": 1024}


def memory_kib(el: ET.Element | None) -> int | None:
    """A libvirt memory element in KiB (libvirt itself writes KiB)."""
    if el is None or el.text is None:
        return None
    factor = _UNIT_KIB.get(el.get("unit", "KiB").lower())
    return None if factor is None else int(int(el.text) * factor)


def pool_xml(name: str, path: str) -> str:
    """A ``dir`` storage pool at ``path``."""
    pool = ET.Element("pool", type="dir")
    _sub(pool, "name", name)
    _sub(_sub(pool, "target"), "path", path)
    return ET.tostring(pool, encoding="unicode")


def volume_xml(name: str, fmt: str, capacity: int, backing_path: str | None = None) -> str:
    """A volume of ``capacity`` bytes; qcow2 ones (v3) may have a qcow2 backing file."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type=fmt)
    if fmt == "qcow2":
        _sub(target, "compat", "1.1")
    if backing_path is not None:
        store = _sub(vol, "backingStore")
        _sub(store, "path", backing_path)
        _sub(store, "format", type="qcow2")
    return ET.tostring(vol, encoding="unicode")


def probe_domain_xml(name: str, kernel: str, log_path: str) -> str:
    """A transient KVM guest that boots ``kernel`` (no root: it panics, then is destroyed).

    Host-passthrough CPU, as real KVM instances get; the kernel's messages go to
    ``log_path`` from the first instruction on (earlyprintk).
    """
    dom = ET.Element("domain", type="kvm")
    _sub(dom, "name", name)
    _sub(dom, "memory", "128", unit="MiB")
    _sub(dom, "vcpu", "1")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", kernel)
    _sub(os_el, "cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1")
    _sub(dom, "cpu", mode="host-passthrough")
    for event in ("poweroff", "reboot", "crash"):
        _sub(dom, f"on_{event}", "destroy")
    serial = _sub(_sub(dom, "devices"), "serial", type="file")
    _sub(serial, "source", path=log_path)
    return ET.tostring(dom, encoding="unicode")


def snapshot_xml(domain: ET.Element, instance_id: str, name: str, pool_path: str) -> str:
    """An external disk-only snapshot of every writable disk, into overlays in the pool."""
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", name)
    disks = _sub(snap, "disks")
    for disk in domain.findall("devices/disk"):
        target = disk.find("target")
        dev = "" if target is None else target.get("dev", "")
        if disk.get("snapshot") == "no" or disk.find("readonly") is not None:
            _sub(disks, "disk", name=dev, snapshot="no")  # the config drive
            continue
        el = _sub(disks, "disk", name=dev, snapshot="external")
        _sub(el, "driver", type="qcow2")
        _sub(el, "source", file=f"{pool_path}/{snapshot_volume_name(instance_id, name, dev)}")
    return ET.tostring(snap, encoding="unicode")


def has_size(domain: ET.Element, vcpus: int, ram_mb: int) -> bool:
    """Whether the domain definition already has ``vcpus`` and ``ram_mb``."""
    return (
        domain.findtext("vcpu") == str(vcpus) and memory_kib(domain.find("memory")) == ram_mb * 1024
    )


def resized(domain: ET.Element, vcpus: int, ram_mb: int) -> str:
    """The domain definition with ``vcpus`` and ``ram_mb`` (memory = currentMemory)."""
    for tag in ("memory", "currentMemory"):
        el = domain.find(tag)
        if el is None:
            el = _sub(domain, tag)
        el.text, el.attrib = str(ram_mb * 1024), {"unit": "KiB"}
    vcpu = domain.find("vcpu")
    if vcpu is None:
        vcpu = _sub(domain, "vcpu")
    vcpu.text = str(vcpus)
    vcpu.attrib.pop("current", None)
    return ET.tostring(domain, encoding="unicode")
