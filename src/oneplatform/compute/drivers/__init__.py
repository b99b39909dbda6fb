"""The driver registry: which driver classes drive each compute type.

Each compute type has a default driver; a pool may name another one in its settings
(``driver``). Drivers are registered as loaders that import their module lazily, so a
missing binding (libvirt-python, sushy) disables that driver with a clear error instead of
breaking the package. Container and VM drivers are registered here; bare metal registers
its own from :mod:`oneplatform.baremetal`. Tests register their fakes the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from oneplatform.compute.drivers.base import ComputeDriver, HostRef
from oneplatform.errors import InvalidInput
from oneplatform.schemas.compute import ComputeType

DriverLoader = Callable[[], type[ComputeDriver]]


@dataclass(frozen=True)
class _Entry:
    name: str
    load: DriverLoader


_DRIVERS: dict[ComputeType, dict[str, _Entry]] = {}
_DEFAULT: dict[ComputeType, str] = {}


def register_driver(
    compute_type: ComputeType, name: str, load: DriverLoader, default: bool = False
) -> None:
    """Make ``name`` a driver of ``compute_type``; ``load`` raises InvalidInput when the
    driver cannot work in this build (a missing binding)."""
    _DRIVERS.setdefault(compute_type, {})[name] = _Entry(name, load)
    if default or compute_type not in _DEFAULT:
        _DEFAULT[compute_type] = name


def unregister_driver(compute_type: ComputeType, name: str) -> None:
    _DRIVERS.get(compute_type, {}).pop(name, None)


def default_driver(compute_type: ComputeType) -> str | None:
    return _DEFAULT.get(compute_type)


def set_default_driver(compute_type: ComputeType, name: str) -> None:
    if name not in _DRIVERS.get(compute_type, {}):
        raise InvalidInput(f"compute type {compute_type.value!r} has no driver {name!r}")
    _DEFAULT[compute_type] = name


def driver_class(compute_type: ComputeType, name: str | None = None) -> type[ComputeDriver]:
    """The class of ``name`` (the compute type's default driver when None)."""
    entries = _DRIVERS.get(compute_type, {})
    name = name or _DEFAULT.get(compute_type)
    entry = entries.get(name or "")
    if entry is None:
        known = ", ".join(sorted(entries)) or "none"
        raise InvalidInput(
            f"compute type {compute_type.value!r} has no driver {name!r} in this build "
            f"(drivers: {known})",
            code="driver_not_available",
        )
    return entry.load()


def driver_for(host: HostRef) -> ComputeDriver:
    """A driver bound to ``host``: the one its pool names, else the compute type's default."""
    name = host.settings.get("driver")
    return driver_class(host.compute_type, str(name) if name else None)(host)


def _podman() -> type[ComputeDriver]:
    from oneplatform.compute.drivers.container import PodmanDriver

    return PodmanDriver


def _libvirt() -> type[ComputeDriver]:
    from oneplatform.compute.drivers.vm import LibvirtDriver
    from oneplatform.compute.drivers.vm_session import libvirt_binding_available

    if not libvirt_binding_available():
        raise InvalidInput(
            "compute type 'vm' needs the libvirt binding (pip install libvirt-python), "
            "which is not installed",
            code="driver_not_available",
        )
    return LibvirtDriver


register_driver(ComputeType.CONTAINER, "podman", _podman, default=True)
register_driver(ComputeType.VM, "libvirt", _libvirt, default=True)
