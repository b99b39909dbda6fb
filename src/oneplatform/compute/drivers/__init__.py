"""Compute drivers, one per compute type, and the registry that finds them."""

from __future__ import annotations

from oneplatform.compute.drivers.base import ComputeDriver, HostRef
from oneplatform.errors import InvalidInput
from oneplatform.schemas.compute import ComputeType


def driver_class(compute_type: ComputeType) -> type[ComputeDriver]:
    """The driver class of a compute type. Imported lazily: a missing binding disables one."""
    if compute_type is ComputeType.CONTAINER:
        from oneplatform.compute.drivers.container import PodmanDriver

        return PodmanDriver
    if compute_type is ComputeType.VM:
        from oneplatform.compute.drivers.vm import LibvirtDriver
        from oneplatform.compute.drivers.vm_session import libvirt_binding_available

        if not libvirt_binding_available():
            raise InvalidInput(
                "compute type 'vm' needs the libvirt binding (pip install libvirt-python), "
                "which is not installed"
            )
        return LibvirtDriver
    if compute_type is ComputeType.BAREMETAL:
        from oneplatform.baremetal.redfish import sushy_available
        from oneplatform.compute.drivers.baremetal import BaremetalDriver

        if not sushy_available():
            raise InvalidInput(
                "compute type 'baremetal' needs sushy (pip install sushy), which is not installed"
            )
        return BaremetalDriver
    raise InvalidInput(f"compute type {compute_type.value!r} has no driver in this build")


def available_driver_classes() -> dict[ComputeType, type[ComputeDriver]]:
    found: dict[ComputeType, type[ComputeDriver]] = {}
    for ct in ComputeType:
        try:
            found[ct] = driver_class(ct)
        except InvalidInput:
            continue
    return found


def driver_for(host: HostRef) -> ComputeDriver:
    return driver_class(host.compute_type)(host)
