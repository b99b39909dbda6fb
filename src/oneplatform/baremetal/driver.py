"""The bare-metal compute type's driver: a whole machine behind a BMC.

Bare metal is not a slow VM: deploying writes a whole-disk image through a deploy ramdisk
booted from virtual media (:mod:`oneplatform.baremetal.deploy`), and a node is one unit of
capacity. Every call the platform makes to a node goes through this driver: the common core
(power on and off, reboot, delete = power off), the capabilities only real machines have
(boot device, virtual media, a BMC reset), and what only nodes need (verify, inspect, wait
for a power state). It reaches the node's BMC through the protocol its host settings name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from oneplatform.baremetal.bmc import Bmc, BootDevice, NodeInventory, PowerAction, open_bmc
from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BackendInstance,
    ComputeDriver,
    HostInventory,
    InstanceSpec,
    PortMapping,
    SupportsBootDevice,
    SupportsForcedReboot,
    SupportsGrowStorage,
    SupportsVirtualMedia,
    VolumeSpec,
)
from oneplatform.errors import NotFound
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.schemas.compute import ComputeType, PowerState


class BaremetalDriver(
    ComputeDriver,
    SupportsBootDevice,
    SupportsVirtualMedia,
    SupportsForcedReboot,
    SupportsGrowStorage,
):
    compute_type: ClassVar[ComputeType] = ComputeType.BAREMETAL
    UNSUPPORTED: ClassVar[Mapping[Capability, str]] = {
        Capability.EXEC: "a bare-metal node has no exec channel: reach it over its network "
        "services",
        Capability.SNAPSHOT: "a node's local disk cannot be snapshotted by its BMC; back up "
        "at the database level",
        Capability.RESIZE: "a machine's CPUs and RAM are its hardware: pick a flavor that "
        "fits another node instead",
        Capability.LIVE_MIGRATE: "processes on a physical machine cannot be moved while running",
    }
    # What the deploy makes: a data partition of the data volume's size, the rest of the
    # node's disk left free for it to grow into (a physical disk does not grow).
    LIMITS: ClassVar[Mapping[Capability, str]] = {
        Capability.GROW_STORAGE: "the data partition grows online into the free rest of the "
        "node's disk, up to its end: the most, recorded at deploy, is the database's "
        "max_size_gb; beyond it, move the database to a flavor with a larger disk (onep db "
        "move)",
    }

    def bmc(self) -> Bmc:
        """The node's BMC, from the host settings bare metal fills (decrypted per call)."""
        bmc = self.host.settings["bmc"]
        return open_bmc(
            str(bmc.get("protocol", "redfish")),
            bmc["address"],
            bmc["username"],
            bmc["password"],
            bmc["system_id"],
            verify=bmc.get("verify", True),
        )

    def _ports(self) -> tuple[PortMapping, ...]:
        return tuple(
            PortMapping(name=str(guest), guest_port=int(guest), host_port=int(t["port"]))
            for guest, t in dict(self.host.settings.get("port_map", {})).items()
        )

    # -- what only nodes have ------------------------------------------------------------
    def inspect(self) -> NodeInventory:
        """CPUs, memory, disks, NICs, boot modes and virtual media, read from the BMC."""
        return self.bmc().inspect()

    def power_state(self) -> PowerState:
        """The node's power as the BMC reports it now (logs in: proves the credentials)."""
        return self.bmc().power_state()

    def power_off(self) -> None:
        """Hard power off (a node may have no OS to ask); silent when off."""
        self.bmc().set_power(PowerAction.FORCE_OFF)

    def power_on(self) -> None:
        self.bmc().set_power(PowerAction.ON)

    def wait_for_power(self, target: PowerState, timeout_s: float) -> None:
        self.bmc().wait_for_power(target, timeout_s=timeout_s)

    # -- the common core ---------------------------------------------------------------------
    def inventory(self) -> HostInventory:
        inv = self.inspect()
        return HostInventory(
            vcpus=inv.cpus,
            ram_mb=inv.memory_mb,
            disk_gb=max((d.size_gb for d in inv.disks), default=0),
        )

    def ensure_image(self, image: ImageArtifact) -> None:
        """Nothing to load: the platform serves the whole-disk image to the deploy ramdisk."""

    def create(self, spec: InstanceSpec) -> BackendInstance:
        """Power on a deployed node from its disk; silent if already on."""
        self.power_on()
        found = self.get(spec.instance_id)
        assert found is not None
        return found

    def get(self, instance_id: str) -> BackendInstance | None:
        """The node's power, as the BMC reports it (a node always exists)."""
        power = self.power_state()
        return BackendInstance(
            instance_id=instance_id,
            backend_id=self.host.name,
            power_state=power,
            backend_state=power.value,
            ports=self._ports(),
        )

    def start(self, instance_id: str) -> None:
        """Power on; silent if on."""
        self.power_on()

    def stop(self, instance_id: str) -> None:
        """Graceful shutdown (ACPI: the guest agent stops the engine and powers off); the
        caller polls and may force_reboot. Silent if off."""
        self.bmc().set_power(PowerAction.OFF)

    def fence(self, instance_id: str) -> None:
        """Power off at the BMC at once."""
        self.power_off()

    def reboot(self, instance_id: str) -> None:
        self.bmc().set_power(PowerAction.REBOOT)

    def delete(self, instance_id: str) -> None:
        """Power off; wiping the disk is the node's cleaning, an operation of its own."""
        self.power_off()

    def console_log(self, instance_id: str, tail: int = 200) -> str:
        return "(the BMC offers no console log over Redfish; see the node's serial console)\n"

    def list_instances(self) -> list[BackendInstance]:
        return []

    def missing_volumes(self, instance_id: str, volumes: Sequence[VolumeSpec]) -> list[str]:
        """A node's data partition is on its own disk, wiped only by cleaning (at delete)."""
        return []

    # -- capabilities ----------------------------------------------------------------------
    def grow_volume(
        self, instance_id: str, volumes: Sequence[VolumeSpec], name: str, size_gb: int
    ) -> None:
        """Nothing for the BMC to do; returns at once. The data partition is in the MBR of
        the node's own disk, which only the running node can change: its guest agent grows
        the partition, then its filesystem, online (the operation's next step). The size
        was checked against the most the disk holds (``max_size_gb``) before."""
        if name not in {v.name for v in volumes}:
            raise NotFound(f"instance {instance_id} has no volume {name!r}")

    def set_boot_device(self, instance_id: str, device: str, persistent: bool) -> None:
        self.bmc().set_boot_device(BootDevice(device), persistent=persistent)

    def insert_media(self, instance_id: str, url: str) -> None:
        """Insert the ISO at ``url`` (ejecting another one first); silent if it is in."""
        self.bmc().insert_media(url)

    def eject_media(self, instance_id: str) -> None:
        bmc = self.bmc()
        if bmc.media_status().inserted:
            bmc.eject_media()

    def force_reboot(self, instance_id: str) -> None:
        """The BMC resets the machine (powers it on if it is off)."""
        self.bmc().set_power(PowerAction.FORCE_REBOOT)
