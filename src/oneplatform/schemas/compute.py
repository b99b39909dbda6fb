"""Compute types and their capabilities, pools, hosts and flavors."""

from __future__ import annotations

import enum
from ipaddress import IPv4Address
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyAddress, StringConstraints, model_validator

from oneplatform.schemas.base import CatalogName, FailureDomain, Request, ResourceName, Response


class ComputeType(enum.StrEnum):
    CONTAINER = "container"
    VM = "vm"
    BAREMETAL = "baremetal"


class PowerState(enum.StrEnum):
    """What a backend (Podman, libvirt, a BMC) says about a unit of compute, mapped from the
    vendor's words in one table per driver; anything unmapped is ``unknown``."""

    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    STARTING = "starting"
    STOPPING = "stopping"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


class CapabilityOut(Response):
    name: str
    supported: bool
    description: str
    reason: str | None = None
    limit: str | None = Field(
        default=None, description="How far a supported capability goes, where it is bounded."
    )


class ComputeTypeOut(Response):
    name: ComputeType
    driver: str
    capabilities: list[CapabilityOut]


DriverName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$"),
    Field(description="A driver of the pool's compute type (its default when omitted)."),
]
Trait = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,63}$")]


class ContainerPoolSettings(Request):
    """What a container pool tells its driver (Podman)."""

    driver: DriverName | None = None
    runtime: Literal["runc", "crun"] = Field(
        default="runc", description="The OCI runtime (crun fails on cgroups v1 hybrid hosts)."
    )


class VmPoolSettings(Request):
    """What a VM pool tells its driver (libvirt)."""

    driver: DriverName | None = None
    domain_type: Literal["auto", "kvm", "qemu"] = Field(
        default="auto", description="auto: KVM where a test guest proves it works, else TCG."
    )
    storage_pool: str = Field(default="oneplatform", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    storage_path: str = Field(
        default="/var/lib/oneplatform/libvirt", pattern=r"^/[A-Za-z0-9_./-]{0,254}$"
    )
    stop_grace_s: float = Field(
        default=60.0, gt=0, le=600, description="A graceful stop's wait before destroy."
    )


class BaremetalPoolSettings(Request):
    """A bare-metal pool: its nodes carry their own BMC settings."""

    driver: DriverName | None = None


POOL_SETTINGS: dict[ComputeType, type[Request]] = {
    ComputeType.CONTAINER: ContainerPoolSettings,
    ComputeType.VM: VmPoolSettings,
    ComputeType.BAREMETAL: BaremetalPoolSettings,
}


class PoolCreate(Request):
    name: ResourceName
    compute_type: ComputeType
    settings: ContainerPoolSettings | VmPoolSettings | BaremetalPoolSettings = Field(
        default_factory=BaremetalPoolSettings,
        description="The settings of the pool's compute type (see the three schemas).",
    )

    @model_validator(mode="before")
    @classmethod
    def _settings_of_its_compute_type(cls, data: Any) -> Any:
        """Read ``settings`` with the schema of ``compute_type``, not whichever fits."""
        if isinstance(data, dict) and isinstance(data.get("settings"), dict):
            try:
                schema = POOL_SETTINGS[ComputeType(str(data.get("compute_type")))]
            except ValueError:
                return data  # compute_type itself is refused with its own message
            data = {**data, "settings": schema.model_validate(data["settings"])}
        return data

    def settings_dict(self) -> dict[str, Any]:
        """The settings as given (defaults stay the driver's), for the store."""
        return self.settings.model_dump(mode="json", exclude_unset=True, exclude_none=True)


class PoolOut(Response):
    id: str
    name: str
    compute_type: str
    settings: dict[str, Any] = {}


class HostCreate(Request):
    name: ResourceName
    pool: CatalogName
    uri: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[a-z][a-z0-9+.-]*://[A-Za-z0-9@._~:/%+-]*$",
        description="How the host is reached: local:// or ssh://user@host/run/podman/podman.sock "
        "(containers); qemu:///system or qemu+ssh://user@host/system (VMs).",
    )
    bind_address: IPvAnyAddress = Field(
        default=IPv4Address("127.0.0.1"),
        description="The address service ports are published on.",
    )
    traits: list[Trait] = Field(default=[], max_length=64)
    zone: FailureDomain = ""
    rack: FailureDomain = ""
    port_range_start: int = Field(default=20000, ge=1024, le=65535)
    port_range_end: int = Field(default=29999, ge=1024, le=65535)
    identity_file: str | None = Field(
        default=None,
        min_length=2,
        max_length=1024,
        pattern=r"^/[^\x00\n]*$",
        description="SSH private key to log in to an ssh:// or qemu+ssh:// host with: an "
        "absolute path on the control plane's machines.",
    )
    host_key: str | None = Field(
        default=None,
        max_length=16384,
        pattern=r"^(ssh-[a-z0-9-]+|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) "
        r"[A-Za-z0-9+/]+={0,3}( [^\n]*)?$",
        description="The SSH host's public key (a line of /etc/ssh/ssh_host_*_key.pub), the "
        "only key the platform trusts for it.",
    )

    @model_validator(mode="after")
    def _range_is_not_empty(self) -> HostCreate:
        if self.port_range_end <= self.port_range_start:
            raise ValueError("port_range_end must be above port_range_start")
        return self


class HostOut(Response):
    id: str
    name: str
    pool: str
    compute_type: str
    uri: str
    bind_address: str
    identity_file: str | None = None
    host_key: str | None = None
    vcpus: int
    ram_mb: int
    disk_gb: int
    used_vcpus: int = 0
    used_ram_mb: int = 0
    used_disk_gb: int = 0
    traits: list[str] = []
    zone: str = ""
    rack: str = ""
    enabled: bool


class FlavorCreate(Request):
    name: CatalogName
    compute_type: ComputeType
    vcpus: int = Field(ge=1, le=256)
    ram_mb: int = Field(ge=64, le=4 * 1024 * 1024)
    disk_gb: int = Field(ge=1, le=65536)
    traits: list[Trait] = Field(default=[], max_length=64)


class FlavorOut(Response):
    id: str
    name: str
    compute_type: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    traits: list[str] = []
