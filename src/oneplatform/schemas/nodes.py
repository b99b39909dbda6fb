"""Bare-metal nodes."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyAddress, StringConstraints, field_validator

from oneplatform.schemas.base import CatalogName, FailureDomain, Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut


class PortTarget(Request):
    """Where one guest port of a node is reached: the node's address (or a forward to it)."""

    host: IPvAnyAddress
    port: int = Field(ge=1, le=65535)


GuestPort = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,4}$")]


class ProvisioningNic(Request):
    """The NIC a node's deploy ramdisk brings up on the provisioning network, where it
    reaches the platform's deploy listener (and nothing else)."""

    mac: str = Field(
        pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", description="lower-case, e.g. 52:54:00:6f:71:00"
    )
    address: ipaddress.IPv4Interface = Field(
        description="its address with prefix, e.g. 10.95.0.10/24"
    )

    @field_validator("address", mode="before")
    @classmethod
    def _with_prefix(cls, value: object) -> object:
        if isinstance(value, str) and "/" not in value:
            raise ValueError("give the address with its prefix length, e.g. 10.95.0.10/24")
        return value


class NodeEnroll(Request):
    name: ResourceName
    pool: CatalogName = "baremetal"
    bmc_protocol: str = Field(
        default="redfish", pattern=r"^[a-z][a-z0-9_-]{0,15}$", description="How the BMC is reached."
    )
    bmc_address: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[a-z][a-z0-9+.-]*://[A-Za-z0-9._~:%\[\]-]+(/[A-Za-z0-9._~:/%-]*)?$",
        description="e.g. https://bmc.example:443",
    )
    bmc_system_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:/-]+$")
    bmc_username: str = Field(default="", max_length=63, pattern=r"^[\x21-\x7e]*$")
    bmc_password: str = Field(default="", max_length=255, pattern=r"^[\x20-\x7e]*$")
    port_map: dict[GuestPort, PortTarget] = Field(
        default={},
        max_length=64,
        description="How the node's guest ports are reached: {guest_port: {host, port}}.",
    )
    provisioning: ProvisioningNic | None = Field(
        default=None, description="The NIC and address its deploy ramdisk uses."
    )
    zone: FailureDomain = ""
    rack: FailureDomain = ""
    provide: bool = Field(default=True, description="Clean and make available after inspection.")


class NodeOut(Response):
    id: str
    name: str
    state: str
    target_state: str | None = None
    power_state: str
    pool: str
    instance: str | None = None
    last_error: str = ""
    bmc_address: str
    bmc_system_id: str
    inventory: dict[str, Any] = {}
    provisioning: ProvisioningNic | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class NodeAccepted(Response):
    operation: OperationOut
    node: NodeOut


class NodePower(Request):
    action: Literal["on", "off", "reboot"]
