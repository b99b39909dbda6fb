"""The virtual-machine driver: QEMU through libvirt (libvirt-python, imported lazily).

``host.uri`` is a libvirt URI: ``qemu:///system`` here, ``qemu+ssh://host/system`` for a remote
host. Nothing touches the host's files directly: images, disks, the config drive and the serial
log all go through libvirt's storage API, so a remote host is only a change of URI. Every
libvirt call runs inside :meth:`~oneplatform.compute.drivers.vm_session.LibvirtSession.call`,
the one place ``libvirtError`` is translated into :class:`~oneplatform.errors.BackendError`
subclasses. What the driver tells libvirt (names, XML, the state table) is in
:mod:`~oneplatform.compute.drivers.vm_domain`; the connection and storage pool in
:mod:`~oneplatform.compute.drivers.vm_session`.

Storage: one ``dir`` storage pool (``host.settings["storage_pool"]``, default ``oneplatform``,
at ``host.settings["storage_path"]``, default ``/var/lib/oneplatform/libvirt``), defined, built,
started and marked autostart on first use. It holds

* per image, uploaded once by :meth:`LibvirtDriver.ensure_image`: ``base-<ref>.qcow2``,
  ``base-<ref>.kernel``, ``base-<ref>.initrd`` (``<ref>`` sanitised plus a short hash);
* per instance, all named ``onep-<instance_id>-…``: ``root.qcow2`` (a qcow2 overlay backed by
  the image's base disk), ``data-<volume>.qcow2`` per :class:`VolumeSpec`, ``config.iso`` (the
  config drive, built locally with xorriso and uploaded), ``console.log`` (the serial console,
  written by virtlogd, truncated at each start) and ``snap-<name>-<disk>.qcow2`` (overlays
  made by :meth:`LibvirtDriver.snapshot`).

Guest contract: virtio disks with serials ``onep-root``, ``onep-config`` (ISO9660, volume id
``onep-config``, ``bundle.json`` = the config bundle), ``onep-data`` (then ``onep-data-2``, …);
direct kernel boot of the image's kernel and initrd; serial console on ttyS0; QEMU user
networking (guest 10.0.2.15) with ``restrict=on`` (the guest reaches nothing outside) and one
``hostfwd`` per port mapping, passed through ``<qemu:commandline>`` (libvirt 9.0 rejects the
passt backend). Ctrl-Alt-Del asks the
guest's PID 1 for a clean power-off.

The domain is ``onep-<instance_id>`` with our instance id and ports in its ``<metadata>``
(namespace :data:`XML_NS`); lookups check that tag, so a retried step finds what an earlier
attempt made.

Domain type (``host.settings["domain_type"]``: ``auto`` (default), ``kvm`` or ``qemu``): for
``auto``, :func:`LibvirtDriver.domain_type` asks libvirt whether it offers KVM at all and then
boots the image's own kernel as a throw-away transient ``kvm`` domain (host-passthrough CPU,
as real KVM instances get) and waits up to :data:`KVM_PROBE_DEADLINE_S` for ``Linux version``
on its serial port. ``/dev/kvm`` and libvirt's capabilities are not enough: under nested
virtualisation on the project's machines they both say yes, yet QEMU aborts at start with
"failed to set MSR 0x10a" (host-passthrough) or the guest hangs in the kernel's decompressor
(default CPU). The answer is cached per URI for the life of the process; the probe takes about
2 s where KVM is broken that way, about 1 s where it works, at most the deadline otherwise.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BackendInstance,
    ComputeDriver,
    HostInventory,
    HostRef,
    ImageArtifact,
    InstanceSpec,
    SupportsForcedReboot,
    SupportsGrowStorage,
    SupportsResize,
    SupportsSnapshot,
    VolumeSpec,
)
from oneplatform.compute.drivers.vm_domain import (
    CONFIG_FILE,
    CONFIG_VOLUME_ID,
    CTRL_ALT_DEL,
    INSTANCE_ID_RE,
    MAX_DATA_VOLUMES,
    MIN_RAM_MB,
    NAME_PREFIX,
    SERIAL_CONFIG,
    SERIAL_ROOT,
    VOLUME_NAME_RE,
    BaseVolumes,
    DiskAttachment,
    DomainPlan,
    base_volume_names,
    build_domain_xml,
    config_volume_name,
    console_log_name,
    console_text,
    data_serial,
    data_volume_name,
    disk_with_serial,
    domain_name,
    has_size,
    instance_id_of,
    map_state,
    ports_of,
    probe_domain_xml,
    resized,
    root_volume_name,
    snapshot_xml,
    state_label,
    tail_lines,
)
from oneplatform.compute.drivers.vm_session import (
    LibvirtSession,
    libvirt_module,
)
from oneplatform.errors import BackendError, BackendNotFound
from oneplatform.images.artifacts import VmImage
from oneplatform.schemas.compute import ComputeType

DEFAULT_STOP_GRACE_S = 60.0
CONCURRENT_START_S = 30.0  # how long another worker's start of the domain may take

STOP_POLL_S = 0.5
KVM_PROBE_DEADLINE_S = 10.0
KVM_PROBE_MARKER = b"Linux version"


@dataclass(frozen=True)
class DomainTypeChoice:
    """The domain type used on a host and why."""

    domain_type: str  # "kvm" or "qemu"
    reason: str


# Probe answers per libvirt URI, for the life of the process.
_DOMAIN_TYPES: dict[str, DomainTypeChoice] = {}
_DOMAIN_TYPES_LOCK = threading.Lock()


def forget_domain_types() -> None:
    """Drop the cached probe answers, e.g. after KVM was enabled on a host."""
    with _DOMAIN_TYPES_LOCK:
        _DOMAIN_TYPES.clear()


class LibvirtDriver(
    ComputeDriver, SupportsSnapshot, SupportsResize, SupportsForcedReboot, SupportsGrowStorage
):
    """Virtual machines on a libvirt/QEMU host (local or ``qemu+ssh://``).

    Stateless apart from a lazily opened connection. Settings read from ``host.settings``:
    ``storage_pool``, ``storage_path``, ``domain_type`` (auto|kvm|qemu) and ``stop_grace_s``
    (how long a graceful stop waits before destroying; default 60).
    """

    compute_type: ClassVar[ComputeType] = ComputeType.VM
    UNSUPPORTED: ClassVar[Mapping[Capability, str]] = {
        Capability.EXEC: "no in-guest exec channel: the VM is reached over its network services",
        Capability.LIVE_MIGRATE: (
            "live migration is not set up: a VM's disks live in its host's local storage "
            "pool (no shared storage) and its ports are QEMU user-networking forwards bound "
            "to that host's address"
        ),
        Capability.BOOT_DEVICE: (
            "VMs boot their image's kernel directly (direct kernel boot): there is no "
            "firmware boot order to choose"
        ),
        Capability.VIRTUAL_MEDIA: (
            "a VM gets its configuration from the config drive attached at create; attaching "
            "ISOs by URL is a bare-metal (Redfish) feature"
        ),
    }

    def __init__(self, host: HostRef) -> None:
        super().__init__(host)
        self._lv = LibvirtSession(host)  # connects on first use

    # ------------------------------------------------------------------ images

    def _base(self, image: ImageArtifact) -> tuple[VmImage, BaseVolumes]:
        if image.vm is None:
            raise BackendError(
                f"image {image.ref} has no VM format (no qcow2 disk, kernel and initrd)",
                host=self.host.name,
                image=image.ref,
            )
        return image.vm, base_volume_names(image.ref)

    # ------------------------------------------------------------------ domains

    def _domain(self, instance_id: str) -> Any | None:
        """The domain of ``instance_id``, or None; one with our name but not our tag raises."""
        conn = self._lv.conn()
        name = domain_name(instance_id)
        dom = self._lv.lookup(lambda: conn.lookupByName(name), f"domain {name}")
        if dom is None:
            return None
        with self._lv.call("read domain XML", domain=name):
            owner = instance_id_of(ET.fromstring(dom.XMLDesc(0)))
        if owner != instance_id:
            raise BackendError(
                f"domain {name} exists on host {self.host.name} but its metadata does not "
                f"carry instance id {instance_id}; remove or rename it",
                host=self.host.name,
                instance_id=instance_id,
            )
        return dom

    def _require(self, instance_id: str) -> Any:
        dom = self._domain(instance_id)
        if dom is None:
            raise BackendNotFound(
                f"no domain for instance {instance_id} on host {self.host.name}",
                host=self.host.name,
                instance_id=instance_id,
            )
        return dom

    def _state(self, dom: Any) -> tuple[int, int]:
        with self._lv.call("read domain state"):
            state, reason = dom.state(0)
        return int(state), int(reason)

    def _to_instance(self, dom: Any, xml: str | None = None) -> BackendInstance:
        with self._lv.call("read domain"):
            root = ET.fromstring(xml if xml is not None else dom.XMLDesc(0))
            backend_id = dom.UUIDString()
        state, reason = self._state(dom)
        return BackendInstance(
            instance_id=instance_id_of(root) or "",
            backend_id=backend_id,
            power_state=map_state(state, reason),
            backend_state=state_label(state, reason),
            ports=ports_of(root),
        )

    def _start_domain(self, dom: Any) -> None:
        """Run the domain: resume a paused one, wake a suspended one, boot a stopped one."""
        label = state_label(*self._state(dom))
        if label == "shutdown":  # on its way off: let it get there (or make it), then boot
            self._stop_domain(dom)
            label = state_label(*self._state(dom))
        if label in ("running", "blocked"):
            return
        try:
            with self._lv.call("start domain"):
                if label.startswith("paused"):
                    dom.resume()
                elif label == "pmsuspended":
                    dom.pMWakeup(0)
                else:
                    dom.create()
        except BackendError:
            # A concurrent start (a worker that lost its lease under load and one that took
            # it over) may be under way: libvirt refuses the second while QEMU starts, and
            # the domain is not active yet. It won the race if the domain becomes active.
            if label.startswith("paused") or not self._becomes_active(dom, CONCURRENT_START_S):
                raise

    def _becomes_active(self, dom: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._active(dom):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def _active(self, dom: Any) -> bool:
        with self._lv.call("read domain state"):
            return bool(dom.isActive())

    def _grace(self) -> float:
        return float(self.host.settings.get("stop_grace_s", DEFAULT_STOP_GRACE_S))

    def _wait_inactive(self, dom: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not self._active(dom):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(STOP_POLL_S)

    def _stop_domain(self, dom: Any) -> None:
        """Ctrl-Alt-Del, wait up to the grace period, then destroy. Silent if already off."""
        if not self._active(dom):
            return
        label = state_label(*self._state(dom))
        if label in ("running", "blocked", "shutdown"):  # a guest that can hear the keys
            try:
                with self._lv.call("send Ctrl-Alt-Del"):
                    keys = list(CTRL_ALT_DEL)
                    dom.sendKey(libvirt_module().VIR_KEYCODE_SET_LINUX, 100, keys, len(keys), 0)
            except BackendError:
                pass  # stopped in between, or cannot take keys: destroy decides below
            if self._wait_inactive(dom, self._grace()):
                return
        try:
            with self._lv.call("destroy domain"):
                dom.destroy()
        except BackendError as exc:  # it went off by itself in between
            if not self._lv.is_code(exc, "VIR_ERR_OPERATION_INVALID"):
                raise

    # ------------------------------------------------------------------ domain type

    def domain_type(self, image: ImageArtifact) -> DomainTypeChoice:
        """The domain type for this host: the ``domain_type`` setting, or the probe's answer.

        For ``auto`` the probe (see the module docstring) boots the image's kernel volume,
        so :meth:`ensure_image` must have run. Cached per URI for the process: the first
        call takes 1-10 s, later ones return at once.
        """
        setting = str(self.host.settings.get("domain_type", "auto")).lower()
        if setting in ("kvm", "qemu"):
            return DomainTypeChoice(setting, f"host setting domain_type={setting}")
        if setting != "auto":
            raise BackendError(
                f"host setting domain_type={setting!r} is not one of auto, kvm, qemu",
                host=self.host.name,
            )
        with _DOMAIN_TYPES_LOCK:
            choice = _DOMAIN_TYPES.get(self.host.uri)
            if choice is None:
                choice = self._probe_kvm(self._base_vol(image, "kernel").path())
                _DOMAIN_TYPES[self.host.uri] = choice
            return choice

    def _probe_kvm(self, kernel: str) -> DomainTypeChoice:
        conn = self._lv.conn()
        try:
            with self._lv.call("read KVM domain capabilities"):
                conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        except BackendError as exc:
            return DomainTypeChoice("qemu", f"libvirt offers no KVM here: {exc.message}")
        probe = f"{NAME_PREFIX}kvm-probe-{uuid.uuid4().hex[:8]}"
        log = f"{probe}.log"
        xml = probe_domain_xml(probe, kernel, f"{self._lv.pool_path()}/{log}")
        try:
            return self._run_probe(xml, log)
        finally:
            with contextlib.suppress(BackendError):
                self._lv.refresh()
                self._lv.delete_volume(log)

    def _run_probe(self, xml: str, log: str) -> DomainTypeChoice:
        started = time.monotonic()
        try:
            with self._lv.call("start KVM probe guest"):
                dom = self._lv.conn().createXML(xml, 0)
        except BackendError as exc:
            first = exc.message.splitlines()[0]
            return DomainTypeChoice("qemu", f"a KVM test guest did not start: {first}")
        try:
            while time.monotonic() - started < KVM_PROBE_DEADLINE_S:
                time.sleep(0.25)
                self._lv.refresh()
                vol = self._lv.vol(log)
                if vol is not None and KVM_PROBE_MARKER in self._lv.download(vol, "probe log"):
                    took = time.monotonic() - started
                    return DomainTypeChoice(
                        "kvm", f"a KVM test guest booted its kernel in {took:.1f}s"
                    )
                if not self._active(dom):
                    return DomainTypeChoice("qemu", "a KVM test guest stopped before booting")
            return DomainTypeChoice(
                "qemu",
                f"a KVM test guest printed no kernel banner within {KVM_PROBE_DEADLINE_S:g}s "
                "(KVM present but not usable, as under broken nested virtualisation)",
            )
        finally:
            with contextlib.suppress(BackendError), self._lv.call("stop KVM probe guest"):
                dom.destroy()

    # ------------------------------------------------------------------ the contract

    def inventory(self) -> HostInventory:
        """CPUs and RAM of the host, and the capacity of the storage pool. Returns at once.

        RAM is the host-wide total of ``virNodeGetMemoryStats``: ``getInfo()``'s memory is
        summed from the NUMA cells' meminfo, which on the project's VMs misses most of the
        RAM (7130 MB reported on a 24 GB machine).
        """
        conn = self._lv.conn()
        lv = libvirt_module()
        with self._lv.call("read host info"):
            info = conn.getInfo()
            stats = conn.getMemoryStats(lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        ram_mb = int(stats.get("total", 0)) // 1024 or int(info[1])
        with self._lv.call("read storage pool info"):
            _state, capacity, _alloc, _avail = self._lv.pool().info()
        return HostInventory(vcpus=int(info[2]), ram_mb=ram_mb, disk_gb=capacity // 1024**3)

    def ensure_image(self, image: ImageArtifact) -> None:
        """Upload the image's base qcow2, kernel and initrd into the pool, each only if missing.

        Returns at once when all three exist with the local files' sizes; an upload takes
        about as long as copying the file (seconds for hundreds of MB locally). A volume that
        exists with another size (a different build under the same ref, or an interrupted
        upload from a crashed process) is an error: overlays of running instances may depend
        on it, so it is never replaced silently.
        """
        vm, names = self._base(image)
        for name, source in (
            (names.disk, vm.disk),
            (names.kernel, vm.kernel),
            (names.initrd, vm.initrd),
        ):
            if not source.is_file():
                raise BackendError(
                    f"{source} of image {image.ref} does not exist", host=self.host.name
                )
            vol = self._lv.vol(name)
            if vol is None:
                self._lv.upload(name, source)
                continue
            with self._lv.call("read volume info", volume=name):
                physical = int(vol.infoFlags(libvirt_module().VIR_STORAGE_VOL_GET_PHYSICAL)[2])
            if physical != source.stat().st_size:
                raise BackendError(
                    f"volume {name} of image {image.ref} exists with {physical} bytes but "
                    f"{source} has {source.stat().st_size}: delete the volume (no instance may "
                    "use it) or build the image under a new ref",
                    host=self.host.name,
                    image=image.ref,
                )

    def _base_vol(self, image: ImageArtifact, part: str) -> Any:
        _vm, names = self._base(image)
        name = str(getattr(names, part))
        vol = self._lv.vol(name)
        if vol is None:
            raise BackendError(
                f"image {image.ref} is not on host {self.host.name} (no volume {name}): "
                "call ensure_image first",
                host=self.host.name,
                image=image.ref,
            )
        return vol

    def create(self, spec: InstanceSpec) -> BackendInstance:
        """Define and start the domain; returns once QEMU runs (the guest boots after that).

        Idempotent: an existing domain tagged with ``spec.instance_id`` is started if it is
        not running and returned, its volumes left as they are. Otherwise the root overlay and
        data volumes are created unless they exist (existing ones, with their data, are
        reused), the config drive is made afresh from ``spec.config_bundle`` (none without a
        bundle), and the domain is defined and started. The image must be on the host (see
        :meth:`ensure_image`). Takes about a second, plus the KVM probe on a URI's first use.
        """
        existing = self._domain(spec.instance_id)
        if existing is None:
            self._check_spec(spec)
            plan = self._plan(spec)
            try:
                with self._lv.call("define domain", domain=domain_name(spec.instance_id)):
                    existing = self._lv.conn().defineXML(build_domain_xml(plan))
            except BackendError as exc:  # a concurrent create defined it first
                if "already exists" not in exc.message:
                    raise
                existing = self._require(spec.instance_id)
        self._start_domain(existing)
        return self._to_instance(existing)

    def _check_spec(self, spec: InstanceSpec) -> None:
        """Refuse, before anything is made, what the names or libvirt cannot take."""
        problems: list[str] = []
        if not INSTANCE_ID_RE.fullmatch(spec.instance_id):
            problems.append("the instance id must be 1-64 letters, digits or '_'")
        if spec.vcpus < 1 or spec.ram_mb < MIN_RAM_MB:
            problems.append(f"a VM needs at least 1 vCPU and {MIN_RAM_MB} MB of RAM")
        names = [v.name for v in spec.volumes]
        if len(names) > MAX_DATA_VOLUMES or len(set(names)) != len(names):
            problems.append(f"at most {MAX_DATA_VOLUMES} volumes, with unique names")
        if any(not VOLUME_NAME_RE.fullmatch(n) for n in names):
            problems.append("volume names are letters, digits, '_', '.', '-' (start alnum)")
        if any(v.size_gb < 1 for v in spec.volumes):
            problems.append("volumes need size_gb >= 1")
        if any(p.protocol not in ("tcp", "udp") for p in spec.ports):
            problems.append("port protocols are tcp or udp")
        if problems:
            raise BackendError(
                f"cannot create instance {spec.instance_id}: {'; '.join(problems)}",
                host=self.host.name,
                instance_id=spec.instance_id,
            )

    def _plan(self, spec: InstanceSpec) -> DomainPlan:
        """Make the instance's volumes and say what the domain is made of."""
        vm, _names = self._base(spec.image)
        base = self._base_vol(spec.image, "disk")
        with self._lv.call("read base volume info"):
            base_size = int(base.info()[1])
        root_size = max(base_size, spec.disk_gb * 1024**3)
        root = self._lv.ensure_volume(root_volume_name(spec.instance_id), "qcow2", root_size, base)
        disks = [DiskAttachment(root.path(), "qcow2", SERIAL_ROOT)]
        config = self._replace_config_drive(spec.instance_id, spec.config_bundle)
        if config is not None:
            disks.append(DiskAttachment(config.path(), "raw", SERIAL_CONFIG, read_only=True))
        for i, volume in enumerate(spec.volumes):
            name = data_volume_name(spec.instance_id, volume.name)
            data = self._lv.ensure_volume(name, "qcow2", volume.size_gb * 1024**3)
            disks.append(DiskAttachment(data.path(), "qcow2", data_serial(i)))
        return DomainPlan(
            instance_id=spec.instance_id,
            title=spec.name,
            image_ref=spec.image.ref,
            domain_type=self.domain_type(spec.image).domain_type,
            vcpus=spec.vcpus,
            ram_mb=spec.ram_mb,
            kernel=self._base_vol(spec.image, "kernel").path(),
            initrd=self._base_vol(spec.image, "initrd").path(),
            cmdline=vm.cmdline,
            disks=tuple(disks),
            console_log=f"{self._lv.pool_path()}/{console_log_name(spec.instance_id)}",
            bind_address=self.host.bind_address,
            ports=tuple(spec.ports),
            host_services=tuple(spec.host_services),
        )

    def _replace_config_drive(self, instance_id: str, bundle: bytes | None) -> Any | None:
        """Make the config ISO hold exactly ``bundle`` (or not exist, for None).

        Built locally with ``xorriso -as mkisofs`` in a private temporary directory (the
        bundle holds secrets; it is deleted with the directory) and uploaded.
        """
        name = config_volume_name(instance_id)
        self._lv.delete_volume(name)
        if bundle is None:
            return None
        if shutil.which("xorriso") is None:
            raise BackendError(
                "xorriso is not installed on this machine: it builds the config drive "
                "(apt-get install xorriso)",
                host=self.host.name,
            )
        with tempfile.TemporaryDirectory(prefix="onep-config-") as tmp:
            content = Path(tmp) / "content"
            content.mkdir(mode=0o700)
            (content / CONFIG_FILE).write_bytes(bundle)
            iso = Path(tmp) / "config.iso"
            argv = ["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", CONFIG_VOLUME_ID]
            proc = subprocess.run(
                [*argv, "-o", str(iso), str(content)],
                capture_output=True,
                timeout=120,
                check=False,
            )
            if proc.returncode != 0:
                raise BackendError(
                    f"xorriso failed to build the config drive (exit {proc.returncode}): "
                    f"{proc.stderr.decode(errors='replace').strip()[-500:]}",
                    host=self.host.name,
                    instance_id=instance_id,
                )
            return self._lv.upload(name, iso)

    def get(self, instance_id: str) -> BackendInstance | None:
        """libvirt's view of the instance, or None if it has no such domain. Returns at once."""
        dom = self._domain(instance_id)
        return None if dom is None else self._to_instance(dom)

    def start(self, instance_id: str) -> None:
        """Boot (or resume) the domain; returns once QEMU runs. Silent if already running."""
        self._start_domain(self._require(instance_id))

    def stop(self, instance_id: str) -> None:
        """Ctrl-Alt-Del, then destroy after ``stop_grace_s``; returns once the domain is off.

        A guest that powers off on Ctrl-Alt-Del stops in seconds; one that ignores it (or
        is still booting) is destroyed when the grace period ends. Silent if already off.
        """
        self._stop_domain(self._require(instance_id))

    def fence(self, instance_id: str) -> None:
        """``virsh destroy``: QEMU killed at once (a paused domain too)."""
        dom = self._require(instance_id)
        if not self._active(dom):
            return
        try:
            with self._lv.call("destroy domain"):
                dom.destroy()
        except BackendError as exc:  # it went off by itself in between
            if not self._lv.is_code(exc, "VIR_ERR_OPERATION_INVALID"):
                raise

    def reboot(self, instance_id: str) -> None:
        """Graceful stop (as :meth:`stop`), then start; starts a stopped domain too."""
        dom = self._require(instance_id)
        self._stop_domain(dom)
        self._start_domain(dom)

    def force_reboot(self, instance_id: str) -> None:
        """Reset the machine at once, without asking the guest; boots a stopped domain."""
        dom = self._require(instance_id)
        if not self._active(dom):
            self._start_domain(dom)
            return
        with self._lv.call("reset domain"):
            dom.reset(0)

    def delete(self, instance_id: str) -> None:
        """Destroy and undefine the domain, then delete every ``onep-<id>-`` volume.

        No grace period: the disks are deleted anyway. Returns when all are gone (about a
        second). Silent for whatever is already gone, so it can be retried; it also deletes
        volumes left behind without a domain.
        """
        dom = self._domain(instance_id)
        if dom is not None:
            lv = libvirt_module()
            flags = (
                lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | lv.VIR_DOMAIN_UNDEFINE_NVRAM
            )
            try:
                with self._lv.call("delete domain", domain=domain_name(instance_id)):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(flags)
            except BackendNotFound:
                pass
        self._lv.refresh()
        prefix = f"{NAME_PREFIX}{instance_id}-"
        with self._lv.call("list volumes"):
            names = [n for n in self._lv.pool().listVolumes() if n.startswith(prefix)]
        for name in names:
            self._lv.delete_volume(name)

    def missing_volumes(self, instance_id: str, volumes: Sequence[VolumeSpec]) -> list[str]:
        self._lv.refresh()
        return [
            v.name for v in volumes if self._lv.vol(data_volume_name(instance_id, v.name)) is None
        ]

    def console_log(self, instance_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the serial console since the domain last started."""
        return tail_lines(console_text(self._read_console(instance_id)), tail)

    def _read_console(self, instance_id: str) -> bytes:
        self._require(instance_id)
        self._lv.refresh()  # virtlogd made the file: the pool learns of it on a refresh
        vol = self._lv.vol(console_log_name(instance_id))
        return b"" if vol is None else self._lv.download(vol, "console log")

    def list_instances(self) -> list[BackendInstance]:
        """Every domain on the host whose metadata carries one of our instance ids."""
        conn = self._lv.conn()
        with self._lv.call("list domains"):
            domains = [d for d in conn.listAllDomains(0) if d.name().startswith(NAME_PREFIX)]
        found: list[BackendInstance] = []
        for dom in domains:
            try:
                with self._lv.call("read domain XML"):
                    xml = dom.XMLDesc(0)
                if instance_id_of(ET.fromstring(xml)) is not None:
                    found.append(self._to_instance(dom, xml))
            except BackendNotFound:  # deleted in between
                continue
        return found

    def snapshot(self, instance_id: str, name: str) -> str:
        """An external disk-only snapshot of the root and data disks; returns ``name``.

        Works on a running or a stopped domain (running: the guest is not quiesced, so the
        disks are crash-consistent). New writes go to ``snap-<name>-<disk>.qcow2`` overlays
        from then on; the config drive is excluded. Takes about a second. Idempotent: a
        snapshot of that name is returned as is.
        """
        if not VOLUME_NAME_RE.fullmatch(name):
            raise BackendError(
                f"snapshot name {name!r} must be letters, digits, '_', '.', '-' (start alnum)",
                host=self.host.name,
            )
        dom = self._require(instance_id)
        if self._lv.lookup(lambda: dom.snapshotLookupByName(name, 0), "snapshot") is not None:
            return name
        with self._lv.call("read domain XML"):
            root = ET.fromstring(dom.XMLDesc(0))
        xml = snapshot_xml(root, instance_id, name, self._lv.pool_path())
        lv = libvirt_module()
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | lv.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        with self._lv.call("create snapshot", domain=domain_name(instance_id), snapshot=name):
            dom.snapshotCreateXML(xml, flags)
        return name

    def resize(self, instance_id: str, vcpus: int, ram_mb: int) -> None:
        """Graceful stop, redefine with ``vcpus`` and ``ram_mb``, start.

        Returns with the domain running at the new size (also if it was stopped before),
        after up to ``stop_grace_s`` plus a second. Idempotent: a running domain that already
        has this size is left alone.
        """
        if vcpus < 1 or ram_mb < MIN_RAM_MB:
            raise BackendError(
                f"a VM needs at least 1 vCPU and {MIN_RAM_MB} MB of RAM", host=self.host.name
            )
        dom = self._require(instance_id)
        lv = libvirt_module()
        with self._lv.call("read domain XML"):
            root = ET.fromstring(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
            active = dom.isActive()
        if active and has_size(root, vcpus, ram_mb):
            return
        self._stop_domain(dom)
        with self._lv.call("redefine domain", domain=domain_name(instance_id)):
            dom = self._lv.conn().defineXML(resized(root, vcpus, ram_mb))
        self._start_domain(dom)

    def grow_volume(
        self, instance_id: str, volumes: Sequence[VolumeSpec], name: str, size_gb: int
    ) -> None:
        """Grow the data disk of volume ``name`` to ``size_gb`` GiB, online.

        A running domain: libvirt's block resize, which has QEMU grow the disk image and
        tell the guest through virtio-blk at once (the guest agent then grows the
        filesystem). A stopped one: the top layer's storage volume (the guest sees the new
        size at its next boot). Returns in about a second. Idempotent: a disk at that size
        or larger is left as it is, never shrunk.
        """
        names = [v.name for v in volumes]
        if name not in names:
            raise BackendError(f"instance has no volume {name!r}", host=self.host.name)
        serial = data_serial(names.index(name))
        dom = self._require(instance_id)
        with self._lv.call("read domain XML"):
            root = ET.fromstring(dom.XMLDesc(0))
            active = dom.isActive()
        disk = disk_with_serial(root, serial)
        if disk is None:
            raise BackendNotFound(
                f"domain {domain_name(instance_id)} has no disk with serial {serial}",
                host=self.host.name,
            )
        target, source = disk
        size = size_gb * 1024**3
        lv = libvirt_module()
        if active:
            with self._lv.call("read block info", domain=domain_name(instance_id), disk=target):
                capacity = int(dom.blockInfo(target, 0)[0])
            if capacity < size:
                flags = lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES
                with self._lv.call("resize block device", domain=domain_name(instance_id)):
                    dom.blockResize(target, size, flags)
            return
        self._lv.refresh()  # a snapshot's overlay was made outside the pool's API
        conn = self._lv.conn()
        with self._lv.call("look up volume", path=source):
            vol = conn.storageVolLookupByPath(source)
            capacity = int(vol.info()[1])
        if capacity < size:
            with self._lv.call("resize volume", path=source):
                vol.resize(size, 0)
