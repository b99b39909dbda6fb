"""Compute types and their capabilities, pools, hosts and flavors."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field

from oneplatform.schemas.base import CatalogName, Request, ResourceName, Response


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


class ComputeTypeOut(Response):
    name: ComputeType
    driver: str
    capabilities: list[CapabilityOut]


class PoolCreate(Request):
    name: ResourceName
    compute_type: ComputeType
    settings: dict[str, Any] = {}


class PoolOut(Response):
    id: str
    name: str
    compute_type: str
    settings: dict[str, Any] = {}


class HostCreate(Request):
    name: ResourceName
    pool: str
    uri: str = Field(min_length=1, max_length=255)
    bind_address: str = "127.0.0.1"
    traits: list[str] = []
    port_range_start: int = Field(default=20000, ge=1024, le=65535)
    port_range_end: int = Field(default=29999, ge=1024, le=65535)


class HostOut(Response):
    id: str
    name: str
    pool: str
    compute_type: str
    uri: str
    bind_address: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    used_vcpus: int = 0
    used_ram_mb: int = 0
    used_disk_gb: int = 0
    traits: list[str] = []
    enabled: bool


class FlavorCreate(Request):
    name: CatalogName
    compute_type: ComputeType
    vcpus: int = Field(ge=1, le=256)
    ram_mb: int = Field(ge=64, le=4 * 1024 * 1024)
    disk_gb: int = Field(ge=1, le=65536)
    traits: list[str] = []


class FlavorOut(Response):
    id: str
    name: str
    compute_type: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    traits: list[str] = []
