"""The BMC of one bare-metal node, whatever protocol reaches it: a small interface and its records.

A :class:`Bmc` asks the device what it allows before it acts, and refuses anything else with
:class:`BmcNotAllowed`, whose details carry the values the BMC does allow. Every other failure
is a :class:`~oneplatform.errors.BackendError` subclass, translated at the implementation's edge
(``BackendUnavailable`` for an unreachable BMC, ``BackendNotFound`` for an unknown system,
:class:`BmcAuthFailed` for refused credentials). The vocabulary here is protocol-neutral
(``hdd``, ``cd``, ``force_off``); each implementation maps it to its protocol's own words in
one table.

Calls are synchronous. Power and boot calls return once the BMC accepted the request, not when
the node reached the new state: poll :meth:`Bmc.power_state` (or :meth:`Bmc.wait_for_power`).
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, TypeVar

from oneplatform.errors import BackendError, InvalidInput
from oneplatform.schemas.compute import PowerState

E = TypeVar("E", bound=enum.StrEnum)


class PowerAction(enum.StrEnum):
    ON = "on"
    OFF = "off"  # graceful: the BMC asks the OS to shut down (nothing happens without an OS)
    REBOOT = "reboot"  # graceful restart
    FORCE_OFF = "force_off"
    FORCE_REBOOT = "force_reboot"


class BootDevice(enum.StrEnum):
    PXE = "pxe"
    HDD = "hdd"
    CD = "cd"
    FLOPPY = "floppy"
    USB = "usb"
    USB_CD = "usb_cd"
    BIOS_SETUP = "bios_setup"
    UEFI_HTTP = "uefi_http"
    UEFI_SHELL = "uefi_shell"
    DIAGS = "diags"
    UTILITIES = "utilities"
    SD_CARD = "sd_card"
    REMOTE_DRIVE = "remote_drive"


class BootMode(enum.StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class MediaType(enum.StrEnum):
    CD = "cd"
    DVD = "dvd"
    FLOPPY = "floppy"
    USB_STICK = "usb_stick"


class Disk(NamedTuple):
    """One disk as the BMC reports it; ``size_gb`` in whole GiB (rounded down)."""

    name: str
    size_gb: int


@dataclass(frozen=True)
class NodeInventory:
    """What the BMC says the node has. ``memory_mb`` is only as precise as the BMC: Redfish
    reports whole GiB. ``nics`` are lower-case MAC addresses; ``boot_modes`` are the modes the
    BMC offers (just the current one when it lists none)."""

    cpus: int
    cpu_arch: str
    memory_mb: int
    disks: tuple[Disk, ...]
    nics: tuple[str, ...]
    boot_modes: tuple[BootMode, ...]
    virtual_media_types: tuple[MediaType, ...]
    power_state: PowerState

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for storing in a node's inventory column."""
        return {
            "cpus": self.cpus,
            "cpu_arch": self.cpu_arch,
            "memory_mb": self.memory_mb,
            "disks": [{"name": d.name, "size_gb": d.size_gb} for d in self.disks],
            "nics": list(self.nics),
            "boot_modes": [m.value for m in self.boot_modes],
            "virtual_media_types": [t.value for t in self.virtual_media_types],
            "power_state": self.power_state.value,
        }


@dataclass(frozen=True)
class BootSetting:
    """The boot override the BMC reports. ``device`` is None when there is none or the BMC
    names a target outside :class:`BootDevice` (``bmc_value`` keeps its own word);
    ``persistent`` is None when the BMC does not say."""

    device: BootDevice | None
    persistent: bool | None
    mode: BootMode | None
    bmc_value: str | None


@dataclass(frozen=True)
class MediaStatus:
    """The virtual CD/DVD drive: the BMC's id for it, what it takes, what is in it."""

    device_id: str
    media_types: tuple[MediaType, ...]
    inserted: bool
    image_url: str | None


class BmcNotAllowed(InvalidInput):
    """The BMC does not allow this value; ``details["allowed"]`` lists what it does allow."""

    code = "bmc_value_not_allowed"

    def __init__(self, parameter: str, value: object, allowed: Iterable[str], bmc: str) -> None:
        allowed_list = sorted(str(a) for a in allowed)
        shown = ", ".join(allowed_list) or "nothing"
        super().__init__(
            f"{parameter} {str(value)!r} is not allowed by the BMC at {bmc}; it allows: {shown}",
            parameter=parameter,
            value=str(value),
            allowed=allowed_list,
            bmc=bmc,
        )


class BmcAuthFailed(BackendError):
    """The BMC refused the node's credentials (HTTP 401/403): fix the username or password."""

    code = "bmc_auth_failed"


def pick_allowed(
    enum_cls: type[E], parameter: str, value: object, allowed: Iterable[E], bmc: str
) -> E:
    """``value`` as a member of ``enum_cls`` if the BMC allows it; else BmcNotAllowed."""
    allowed_set = frozenset(allowed)
    try:
        member = enum_cls(str(value))
    except ValueError:
        member = None
    if member is None or member not in allowed_set:
        raise BmcNotAllowed(parameter, value, (a.value for a in allowed_set), bmc)
    return member


def power_request(action: PowerAction, current: PowerState) -> PowerAction | None:
    """What to ask the BMC for to do ``action`` from ``current``; None when nothing is needed.

    On while on (or powering on) and off while off are silent; a graceful off while already
    powering off too. A reboot of a node that is off powers it on.
    """
    if action is PowerAction.ON:
        return None if current in (PowerState.RUNNING, PowerState.STARTING) else action
    if action is PowerAction.OFF:
        return None if current in (PowerState.STOPPED, PowerState.STOPPING) else action
    if action is PowerAction.FORCE_OFF:
        return None if current is PowerState.STOPPED else action
    if current is PowerState.STOPPED:
        return PowerAction.ON
    return action


class Bmc(abc.ABC):
    """One node's BMC. No I/O in the constructor; the connection opens on first use.

    Every method asks the BMC first and acts only where needed, so each is safe to retry.
    """

    address: str  # for messages: where the BMC is

    @abc.abstractmethod
    def inspect(self) -> NodeInventory:
        """CPUs, memory, disks, NICs, boot modes, virtual media and power, read from the BMC."""

    @abc.abstractmethod
    def power_state(self) -> PowerState:
        """The power state the BMC reports now (UNKNOWN for anything it cannot name)."""

    @abc.abstractmethod
    def allowed_power_actions(self) -> frozenset[PowerAction]:
        """The power actions this BMC offers."""

    @abc.abstractmethod
    def set_power(self, action: PowerAction | str) -> None:
        """Ask for ``action`` (see :func:`power_request`); returns once the BMC accepted it.

        Silent when the node is already there. BmcNotAllowed when the BMC does not offer it.
        """

    @abc.abstractmethod
    def allowed_boot_devices(self) -> frozenset[BootDevice]:
        """The boot devices the BMC accepts as an override target."""

    @abc.abstractmethod
    def boot_setting(self) -> BootSetting:
        """The boot override as the BMC reports it."""

    @abc.abstractmethod
    def set_boot_device(self, device: BootDevice | str, persistent: bool = False) -> None:
        """Boot from ``device`` at the next boot only, or at every boot when ``persistent``.

        BmcNotAllowed (listing the BMC's allowed values) for a device the BMC does not offer.
        """

    @abc.abstractmethod
    def media_status(self) -> MediaStatus:
        """The virtual CD/DVD drive and what is inserted in it."""

    @abc.abstractmethod
    def insert_media(self, url: str) -> None:
        """Insert the image at ``url`` into the virtual CD/DVD drive (the BMC fetches it).

        Silent when that URL is already inserted; another image is ejected first.
        """

    @abc.abstractmethod
    def eject_media(self) -> None:
        """Eject the virtual CD/DVD drive; silent when it is empty."""

    def close(self) -> None:  # noqa: B027 - optional hook: nothing to release by default
        """Release the connection (e.g. log out of a BMC session)."""

    def wait_for_power(
        self, target: PowerState | str, timeout_s: float = 120.0, poll_s: float = 1.0
    ) -> PowerState:
        """Poll :meth:`power_state` until it is ``target``; BackendError after ``timeout_s``."""
        target = PowerState(target)
        deadline = time.monotonic() + timeout_s
        while (state := self.power_state()) is not target:
            if time.monotonic() > deadline:
                raise BackendError(
                    f"BMC at {self.address}: power is still {state.value} after "
                    f"{timeout_s:.0f} s, expected {target.value}",
                    code="bmc_timeout",
                    bmc=self.address,
                    power_state=state.value,
                )
            time.sleep(poll_s)
        return state

    def __enter__(self) -> Bmc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- protocols -------------------------------------------------------------------------------
class BmcFactory(Protocol):
    """``(address, username, password, system_id, verify_tls=…)`` → a BMC client."""

    def __call__(
        self,
        address: str,
        username: str,
        password: str,
        system_id: str,
        verify_tls: bool | str = True,
    ) -> Bmc: ...


_PROTOCOLS: dict[str, Callable[[], BmcFactory]] = {}


def register_bmc(protocol: str, load: Callable[[], BmcFactory]) -> None:
    """Make ``protocol`` reachable; ``load`` returns a factory ``(address, username, password,
    system_id) -> Bmc`` and raises InvalidInput when the protocol's library is missing."""
    _PROTOCOLS[protocol] = load


def bmc_protocols() -> list[str]:
    return sorted(_PROTOCOLS)


def open_bmc(
    protocol: str,
    address: str,
    username: str,
    password: str,
    system_id: str,
    verify: bool | str = True,
) -> Bmc:
    """A BMC client for one node; no I/O until its first call. ``verify``: an https://
    BMC's certificate is checked against the system's CAs (True) or the CA bundle at that
    path (never False here: an unverified BMC is one anybody on the path may play)."""
    load = _PROTOCOLS.get(protocol)
    if load is None:
        raise InvalidInput(
            f"BMC protocol {protocol!r} is not supported (supported: "
            f"{', '.join(bmc_protocols()) or 'none'})",
            code="bmc_protocol_not_supported",
        )
    return load()(address, username, password, system_id, verify_tls=verify)
