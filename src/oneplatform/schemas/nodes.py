"""Bare-metal nodes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyAddress, StringConstraints

from oneplatform.schemas.base import CatalogName, Request, ResourceName, Response
from oneplatform.schemas.operations import OperationOut


class PortTarget(Request):
    """Where one guest port of a node is reached: the node's address (or a forward to it)."""

    host: IPvAnyAddress
    port: int = Field(ge=1, le=65535)


GuestPort = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,4}$")]


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
    created_at: dt.datetime
    updated_at: dt.datetime


class NodeAccepted(Response):
    operation: OperationOut
    node: NodeOut


class NodePower(Request):
    action: Literal["on", "off", "reboot"]
