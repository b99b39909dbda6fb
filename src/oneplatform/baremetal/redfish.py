"""A node's BMC over Redfish, through ``sushy`` (imported lazily).

``RedfishBmc(address, username, password, system_id)``: ``address`` is the Redfish service's
base URL (``https://bmc.example`` or ``http://127.0.0.1:8000``), ``system_id`` the ComputerSystem
id (or its full ``/redfish/v1/Systems/…`` path). The first call connects (sushy reads the
service root and opens a session where the BMC offers one, else uses HTTP basic auth); every
call then reads the System afresh, checks what the BMC allows (reset types, boot source
targets, the virtual drive's media types) and only then acts.

:meth:`RedfishBmc._call` is the one place where sushy and requests exceptions become
:class:`~oneplatform.errors.BackendError` subclasses: ``BackendUnavailable`` (cannot connect,
HTTP 503), :class:`~.bmc.BmcAuthFailed` (HTTP 401/403), ``BackendNotFound`` (HTTP 404, e.g. an
unknown system id), ``BackendError`` otherwise, with the BMC's own message and
``details["http_status"]``.

Our words map to Redfish's in the tables below; anything the BMC reports that is not in a
table maps to ``UNKNOWN``/None, never to a guess. Virtual media: the drive whose MediaTypes
include CD or DVD, under the System (Redfish 1.13+) or else under its managers.

Known sushy-tools emulator behaviour (the test double): a one-time boot override is reported
back as ``Continuous``; memory is reported in whole GiB (1536 MiB reads as 1 GiB); ejecting
removes the CD-ROM device from the libvirt domain, after which ``Cd`` is still listed as
allowed but setting it fails with HTTP 500 "Target libvirt device Cd does not exist" until
media is inserted again.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

from oneplatform.baremetal.bmc import (
    Bmc,
    BmcAuthFailed,
    BmcNotAllowed,
    BootDevice,
    BootMode,
    BootSetting,
    Disk,
    MediaStatus,
    MediaType,
    NodeInventory,
    PowerAction,
    PowerState,
    pick_allowed,
    power_request,
)
from oneplatform.errors import BackendError, BackendNotFound, BackendUnavailable, PlatformError

ROOT_PREFIX = "/redfish/v1/"
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
# sushy retries GETs answered with 5xx and connections that fail; its own defaults (10 x 3 s)
# would hold a worker for 30 s on a BMC that is down.
SERVER_SIDE_RETRIES = 3
RETRY_DELAY_S = 1

POWER_STATES: dict[str, PowerState] = {
    "On": PowerState.RUNNING,
    "Off": PowerState.STOPPED,
    "PoweringOn": PowerState.STARTING,
    "PoweringOff": PowerState.STOPPING,
}
# Redfish ResetType values for each action, in order of preference.
RESET_TYPES: dict[PowerAction, tuple[str, ...]] = {
    PowerAction.ON: ("On", "ForceOn"),
    PowerAction.OFF: ("GracefulShutdown",),
    PowerAction.FORCE_OFF: ("ForceOff",),
    PowerAction.REBOOT: ("GracefulRestart",),
    PowerAction.FORCE_REBOOT: ("ForceRestart", "PowerCycle"),
}
BOOT_SOURCES: dict[BootDevice, str] = {
    BootDevice.PXE: "Pxe",
    BootDevice.HDD: "Hdd",
    BootDevice.CD: "Cd",
    BootDevice.FLOPPY: "Floppy",
    BootDevice.USB: "Usb",
    BootDevice.USB_CD: "UsbCd",
    BootDevice.BIOS_SETUP: "BiosSetup",
    BootDevice.UEFI_HTTP: "UefiHttp",
    BootDevice.UEFI_SHELL: "UefiShell",
    BootDevice.DIAGS: "Diags",
    BootDevice.UTILITIES: "Utilities",
    BootDevice.SD_CARD: "SDCard",
    BootDevice.REMOTE_DRIVE: "RemoteDrive",
}
BOOT_DEVICES: dict[str, BootDevice] = {v: k for k, v in BOOT_SOURCES.items()}
BOOT_MODES: dict[str, BootMode] = {"Legacy": BootMode.BIOS, "UEFI": BootMode.UEFI}
MEDIA_TYPES: dict[str, MediaType] = {
    "CD": MediaType.CD,
    "DVD": MediaType.DVD,
    "Floppy": MediaType.FLOPPY,
    "USBStick": MediaType.USB_STICK,
}
# Redfish InstructionSet (preferred) or ProcessorArchitecture -> the usual Linux name.
CPU_ARCHES: dict[str, str] = {
    "x86-64": "x86_64",
    "x86": "x86_64",
    "IA-64": "ia64",
    "ARM-A64": "aarch64",
    "ARM": "aarch64",
    "ARM-A32": "armv7l",
    "PowerISA": "ppc64le",
    "Power": "ppc64le",
    "MIPS64": "mips64",
}
CD_MEDIA = frozenset({"CD", "DVD"})


def sushy_available() -> bool:
    """Whether sushy can be imported (without importing it)."""
    return importlib.util.find_spec("sushy") is not None


def sushy_module() -> Any:
    """The sushy package, imported on first use; BackendUnavailable when it is missing."""
    try:
        import sushy
    except ImportError as exc:
        raise BackendUnavailable(
            "sushy is not installed: the Redfish BMC driver is disabled (pip install sushy)"
        ) from exc
    return sushy


def word(value: Any) -> str | None:
    """A sushy enum member (or a plain string) as the Redfish word, None for None."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


class RedfishBmc(Bmc):
    """A Redfish BMC and one ComputerSystem behind it. No I/O until the first call."""

    def __init__(
        self,
        address: str,
        username: str,
        password: str,
        system_id: str,
        verify_tls: bool | str = True,
    ) -> None:
        self.address = address.rstrip("/")
        self.username = username
        self._password = password
        self.system_id = system_id
        self.verify_tls = verify_tls
        self._root: Any = None

    def __repr__(self) -> str:
        return f"RedfishBmc({self.address!r}, system_id={self.system_id!r})"

    # ------------------------------------------------------------------ the edge

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Run sushy calls; the one place their exceptions become BackendError subclasses."""
        exceptions = sushy_module().exceptions
        import requests

        try:
            yield
        except PlatformError:
            raise
        except exceptions.SushyError as exc:
            raise self._translate(what, exc) from exc
        except requests.RequestException as exc:
            raise BackendUnavailable(
                f"Redfish {what} failed: cannot reach the BMC at {self.address}: {exc}",
                bmc=self.address,
                system=self.system_id,
            ) from exc

    def _translate(self, what: str, exc: Any) -> BackendError:
        exceptions = sushy_module().exceptions
        info: dict[str, Any] = {"bmc": self.address, "system": self.system_id}
        status = getattr(exc, "status_code", None)
        if status is not None:
            info["http_status"] = status
        text = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        prefix = f"Redfish {what} failed at {self.address}"
        if isinstance(exc, exceptions.ConnectionError):
            return BackendUnavailable(f"{prefix}: cannot reach the BMC: {text}", **info)
        if isinstance(exc, exceptions.AccessError):
            return BmcAuthFailed(
                f"{prefix}: the BMC refused the credentials of user {self.username!r} "
                f"(HTTP {status}): check the node's BMC username and password",
                **info,
            )
        if isinstance(exc, exceptions.ResourceNotFoundError):
            return BackendNotFound(f"{prefix}: not found (HTTP 404): {text}", **info)
        if status == 503:
            return BackendUnavailable(f"{prefix}: the BMC is busy (HTTP 503): {text}", **info)
        if status is not None:
            return BackendError(f"{prefix}: HTTP {status}: {text}", **info)
        return BackendError(f"{prefix}: {text}", **info)

    def _connect(self) -> Any:
        """The sushy root, made on first use. A session where the service root (readable
        without credentials) offers a SessionService, else HTTP basic auth: sushy's default
        would try a session first and log an error on every connect to a BMC without one."""
        if self._root is None:
            sushy = sushy_module()
            conn = sushy.connector.Connector(
                self.address,
                verify=self.verify_tls,
                server_side_retries=SERVER_SIDE_RETRIES,
                server_side_retries_delay=RETRY_DELAY_S,
                default_request_timeout=READ_TIMEOUT_S,
                connect_timeout=CONNECT_TIMEOUT_S,
            )
            service_root = conn.get(ROOT_PREFIX).json()
            auth_cls = (
                sushy.auth.SessionOrBasicAuth
                if "SessionService" in service_root
                else sushy.auth.BasicAuth
            )
            auth = auth_cls(username=self.username, password=self._password)
            self._root = sushy.Sushy(
                self.address, auth=auth, connector=conn, root_prefix=ROOT_PREFIX
            )
        return self._root

    def _system(self) -> Any:
        """The ComputerSystem, read afresh (one GET, plus the connection on first use)."""
        path = self.system_id
        if not path.startswith("/"):
            path = ROOT_PREFIX + "Systems/" + path
        with self._call("connect"):
            root = self._connect()
        with self._call("read system"):
            return root.get_system(path)

    def close(self) -> None:
        """Log out of the BMC session, if one was opened; the next call reconnects."""
        root, self._root = self._root, None
        if root is not None and root._auth is not None:  # sushy keeps the session there
            with contextlib.suppress(Exception):
                root._auth.close()
            root._auth = None  # so that sushy's __del__ does not log out a second time

    # ------------------------------------------------------------------ power

    def power_state(self) -> PowerState:
        return POWER_STATES.get(word(self._system().power_state) or "", PowerState.UNKNOWN)

    def _reset_types(self, system: Any) -> set[str]:
        with self._call("read allowed reset types"):
            return {w for v in system.get_allowed_reset_system_values() if (w := word(v))}

    def _allowed_actions(self, reset_types: set[str]) -> frozenset[PowerAction]:
        return frozenset(a for a, words in RESET_TYPES.items() if reset_types & set(words))

    def allowed_power_actions(self) -> frozenset[PowerAction]:
        return self._allowed_actions(self._reset_types(self._system()))

    def set_power(self, action: PowerAction | str) -> None:
        """Ask for ``action`` after checking the power state (silent when already there) and
        the BMC's allowed ResetType values; returns once the BMC accepted the request."""
        system = self._system()
        reset_types = self._reset_types(system)
        allowed = self._allowed_actions(reset_types)
        wanted = pick_allowed(PowerAction, "power action", action, allowed, self.address)
        current = POWER_STATES.get(word(system.power_state) or "", PowerState.UNKNOWN)
        request = power_request(wanted, current)
        if request is None:
            return
        reset = next(w for w in RESET_TYPES[request] if w in reset_types)
        with self._call(f"power {request.value} ({reset})"):
            system.reset_system(sushy_module().ResetType(reset))

    # ------------------------------------------------------------------ boot

    def _boot_devices(self, system: Any) -> frozenset[BootDevice]:
        with self._call("read allowed boot sources"):
            sources = system.get_allowed_system_boot_source_values()
        return frozenset(BOOT_DEVICES[w] for v in sources if (w := word(v)) in BOOT_DEVICES)

    def allowed_boot_devices(self) -> frozenset[BootDevice]:
        return self._boot_devices(self._system())

    def boot_setting(self) -> BootSetting:
        boot = self._system().boot
        target = word(boot.target) if boot else None
        enabled = word(boot.enabled) if boot else None
        return BootSetting(
            device=BOOT_DEVICES.get(target or ""),
            persistent=None if enabled is None else enabled == "Continuous",
            mode=BOOT_MODES.get(word(boot.mode) or "") if boot else None,
            bmc_value=target,
        )

    def set_boot_device(self, device: BootDevice | str, persistent: bool = False) -> None:
        """Set the boot source override: ``Once`` or, when ``persistent``, ``Continuous``."""
        system = self._system()
        allowed = self._boot_devices(system)
        chosen = pick_allowed(BootDevice, "boot device", device, allowed, self.address)
        enabled = "Continuous" if persistent else "Once"
        offered = (system.json.get("Boot") or {}).get(
            "BootSourceOverrideEnabled@Redfish.AllowableValues"
        )
        if offered and enabled not in offered:
            raise BmcNotAllowed("boot override", enabled, offered, self.address)
        sushy = sushy_module()
        with self._call(f"set boot device {BOOT_SOURCES[chosen]} ({enabled})"):
            system.set_system_boot_options(
                target=sushy.BootSource(BOOT_SOURCES[chosen]),
                enabled=sushy.BootSourceOverrideEnabled(enabled),
            )

    # ------------------------------------------------------------------ virtual media

    def _media_drives(self, system: Any) -> list[Any]:
        """Every virtual media drive: the System's own, else its managers'."""
        exceptions = sushy_module().exceptions
        with self._call("list virtual media"):
            try:
                return list(system.virtual_media.get_members())
            except exceptions.MissingAttributeError:
                pass
            drives: list[Any] = []
            for manager in system.managers:
                with contextlib.suppress(exceptions.MissingAttributeError):
                    drives.extend(manager.virtual_media.get_members())
            return drives

    def _cd_drive(self, system: Any) -> Any:
        for drive in self._media_drives(system):
            if {word(t) for t in drive.media_types or ()} & CD_MEDIA:
                return drive
        raise BackendError(
            f"the BMC at {self.address} offers no virtual media drive for CD/DVD images",
            code="bmc_no_virtual_cd",
            bmc=self.address,
            system=self.system_id,
        )

    def _media_status(self, drive: Any) -> MediaStatus:
        return MediaStatus(
            device_id=str(drive.identity),
            media_types=_media_types(drive.media_types),
            inserted=bool(drive.inserted),
            image_url=drive.image or None,
        )

    def media_status(self) -> MediaStatus:
        return self._media_status(self._cd_drive(self._system()))

    def insert_media(self, url: str) -> None:
        """Insert ``url`` (write-protected) into the CD/DVD drive; the BMC downloads it, so
        it must reach the URL. Silent when that URL is already in; another image is ejected
        first."""
        drive = self._cd_drive(self._system())
        if drive.inserted and drive.image == url:
            return
        if drive.inserted:
            with self._call(f"eject virtual media {drive.identity}"):
                drive.eject_media()
        with self._call(f"insert virtual media {url} into {drive.identity}"):
            drive.insert_media(url, inserted=True, write_protected=True)

    def eject_media(self) -> None:
        drive = self._cd_drive(self._system())
        if not drive.inserted and not drive.image:
            return
        with self._call(f"eject virtual media {drive.identity}"):
            drive.eject_media()

    # ------------------------------------------------------------------ inspection

    def inspect(self) -> NodeInventory:
        system = self._system()
        with self._call("inspect"):
            memory_gib = system.memory_summary.size_gib if system.memory_summary else None
            return NodeInventory(
                cpus=self._cpu_count(system),
                cpu_arch=self._cpu_arch(system),
                memory_mb=int(memory_gib or 0) * 1024,
                disks=self._disks(system),
                nics=self._nics(system),
                boot_modes=_boot_modes(system.json.get("Boot") or {}),
                virtual_media_types=self._all_media_types(system),
                power_state=POWER_STATES.get(word(system.power_state) or "", PowerState.UNKNOWN),
            )

    def _cpu_count(self, system: Any) -> int:
        count = (system.json.get("ProcessorSummary") or {}).get("Count")
        if isinstance(count, int) and count > 0:
            return count
        with contextlib.suppress(sushy_module().exceptions.MissingAttributeError):
            return int(system.processors.summary.count or 0)
        return 0

    def _cpu_arch(self, system: Any) -> str:
        exceptions = sushy_module().exceptions
        try:
            processors = system.processors.get_members()
        except exceptions.MissingAttributeError:
            return "unknown"
        for proc in processors:
            for value in (word(proc.instruction_set), word(proc.processor_architecture)):
                if value in CPU_ARCHES:
                    return CPU_ARCHES[value]
        return "unknown"

    def _disks(self, system: Any) -> tuple[Disk, ...]:
        """Disks from SimpleStorage, else from Storage's drives; devices without a size (an
        empty CD drive) are left out."""
        exceptions = sushy_module().exceptions
        found: list[tuple[str, int | None]] = []
        with contextlib.suppress(exceptions.MissingAttributeError):
            for controller in system.simple_storage.get_members():
                found += [(d.name, d.capacity_bytes) for d in controller.devices or ()]
        if not found:
            with contextlib.suppress(exceptions.MissingAttributeError):
                for storage in system.storage.get_members():
                    found += [(d.name or d.identity, d.capacity_bytes) for d in storage.drives]
        return tuple(Disk(str(name), size // 2**30) for name, size in found if size)

    def _nics(self, system: Any) -> tuple[str, ...]:
        with contextlib.suppress(sushy_module().exceptions.MissingAttributeError):
            macs = (nic.mac_address for nic in system.ethernet_interfaces.get_members())
            return tuple(sorted(str(m).lower() for m in macs if m))
        return ()

    def _all_media_types(self, system: Any) -> tuple[MediaType, ...]:
        types: set[MediaType] = set()
        for drive in self._media_drives(system):
            types.update(_media_types(drive.media_types))
        return tuple(sorted(types))


def _media_types(values: Any) -> tuple[MediaType, ...]:
    return tuple(MEDIA_TYPES[w] for v in values or () if (w := word(v)) in MEDIA_TYPES)


def _boot_modes(boot: dict[str, Any]) -> tuple[BootMode, ...]:
    """The boot modes the BMC lists as allowed, else just the current one, else none."""
    listed = boot.get("BootSourceOverrideMode@Redfish.AllowableValues") or [
        boot.get("BootSourceOverrideMode")
    ]
    return tuple(BOOT_MODES[m] for m in listed if m in BOOT_MODES)
