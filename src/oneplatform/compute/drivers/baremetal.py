"""The bare-metal compute type: a whole machine behind a BMC.

Bare metal is not a slow VM: deploying writes a whole-disk image through a deploy ramdisk
booted from virtual media (an operation of its own, ``nodes/deploy.py``), and a node is
one unit of capacity. This driver covers the common core on an already deployed node —
power through the BMC — and the capabilities only real machines have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BackendInstance,
    ComputeDriver,
    HostInventory,
    ImageArtifact,
    InstanceSpec,
    PortMapping,
    SupportsBootDevice,
    SupportsPowerCycle,
    SupportsVirtualMedia,
)
from oneplatform.compute.states import PowerState
from oneplatform.schemas.compute import ComputeType

# BMC power states to ours; anything else is UNKNOWN.
POWER_STATES: Mapping[str, PowerState] = {
    "on": PowerState.RUNNING,
    "off": PowerState.STOPPED,
    "powering_on": PowerState.STARTING,
    "powering_off": PowerState.STOPPING,
}


class BaremetalDriver(ComputeDriver, SupportsBootDevice, SupportsVirtualMedia, SupportsPowerCycle):
    compute_type: ClassVar[ComputeType] = ComputeType.BAREMETAL
    UNSUPPORTED: ClassVar[Mapping[Capability, str]] = {
        Capability.EXEC: "a bare-metal node has no exec channel: reach it over its network "
        "services",
        Capability.SNAPSHOT: "a node's local disk cannot be snapshotted by its BMC; back up "
        "at the database level",
        Capability.RESIZE: "a machine's CPUs and RAM are its hardware: pick a flavor that "
        "fits another node instead",
        Capability.LIVE_MIGRATE: "processes on a physical machine cannot be moved while running",
        Capability.SERIAL_CONSOLE: "serial-over-LAN is not exposed through Redfish here",
        Capability.FORCED_REBOOT: "use power_cycle: the BMC resets the machine",
    }

    def _bmc(self) -> Any:
        from oneplatform.baremetal.redfish import RedfishBmc

        bmc = self.host.settings["bmc"]
        return RedfishBmc(bmc["address"], bmc["username"], bmc["password"], bmc["system_id"])

    def _ports(self) -> tuple[PortMapping, ...]:
        return tuple(
            PortMapping(name=str(guest), guest_port=int(guest), host_port=int(t["port"]))
            for guest, t in dict(self.host.settings.get("port_map", {})).items()
        )

    def inventory(self) -> HostInventory:
        inv = self._bmc().inspect()
        return HostInventory(
            vcpus=inv.cpus,
            ram_mb=inv.memory_mb,
            disk_gb=max((d.size_gb for d in inv.disks), default=0),
        )

    def ensure_image(self, image: ImageArtifact) -> None:
        """Nothing to load: the platform serves the whole-disk image to the deploy ramdisk."""

    def create(self, spec: InstanceSpec) -> BackendInstance:
        """Power on a deployed node from its disk; silent if already on."""
        self._bmc().set_power("on")
        found = self.get(spec.instance_id)
        assert found is not None
        return found

    def get(self, instance_id: str) -> BackendInstance | None:
        """The node's power, as the BMC reports it (a node always exists)."""
        power = str(self._bmc().power_state())
        return BackendInstance(
            instance_id=instance_id,
            backend_id=self.host.name,
            power_state=POWER_STATES.get(power, PowerState.UNKNOWN),
            backend_state=power,
            ports=self._ports(),
        )

    def start(self, instance_id: str) -> None:
        """Power on; silent if on."""
        self._bmc().set_power("on")

    def stop(self, instance_id: str) -> None:
        """Graceful shutdown (ACPI: the guest agent stops the engine and powers off); the
        caller polls and may power_cycle. Silent if off."""
        self._bmc().set_power("off")

    def reboot(self, instance_id: str) -> None:
        self._bmc().set_power("reboot")

    def delete(self, instance_id: str) -> None:
        """Power off; wiping the disk is the node's cleaning, an operation of its own."""
        self._bmc().set_power("force_off")

    def console_log(self, instance_id: str, tail: int = 200) -> str:
        return "(the BMC offers no console log over Redfish; see the node's serial console)\n"

    def list_instances(self) -> list[BackendInstance]:
        return []

    def set_boot_device(self, instance_id: str, device: str, persistent: bool) -> None:
        self._bmc().set_boot_device(device, persistent=persistent)

    def insert_media(self, instance_id: str, url: str) -> None:
        self._bmc().insert_media(url)

    def power_cycle(self, instance_id: str) -> None:
        self._bmc().set_power("force_reboot")
